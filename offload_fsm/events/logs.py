"""structlog for offload_fsm: configured once, JSON for files, console rendering for humans.

:func:`configure_logging` is called once by the program (the CLI), never by library code. It
routes structlog through the standard-library logger ``offload_fsm`` (which does not
propagate to the root logger) with up to two handlers: a JSON-lines file and a console
renderer on stderr (stdout is left to data). Context bound with :func:`bound_context` (or
``structlog.contextvars``) is merged into every line, so a run id bound once appears on each.

Every event kind logs under one namespaced name, ``offload_fsm.<kind>`` (e.g.
``offload_fsm.transition``, ``offload_fsm.gate_decision``); :func:`log_events` is the bus
subscriber that logs each event under its name with its fields.

Every line is redacted (:func:`offload_fsm.core.redact.redact_value` on every field, nested ones
and the JSON file's tracebacks included, as the last step before rendering): a URL's
user-info, an ``Authorization`` value or an API key never reaches a log file or the console.

Before :func:`configure_logging` runs, :func:`get_logger` loggers still go to the standard
``logging`` module, so an application that configured logging its own way sees them there.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TextIO, cast

import msgspec
import structlog
from structlog.typing import Processor

from offload_fsm.core.errors import ConfigError
from offload_fsm.core.redact import redact_value
from offload_fsm.events.bus import Subscription
from offload_fsm.events.kinds import KINDS, Event

NAMESPACE = "offload_fsm"  # the stdlib logger name and the prefix of every event name

LEVELS: Mapping[str, int] = MappingProxyType(
    {
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warning": logging.WARNING,
        "error": logging.ERROR,
        "critical": logging.CRITICAL,
    }
)

# Level an event kind logs at; kinds not listed log at INFO. Per-round measurements are
# DEBUG (many per gate); anything that means "something went wrong" is WARNING or ERROR.
EVENT_LEVELS: Mapping[str, int] = MappingProxyType(
    {
        "memory_sample": logging.DEBUG,
        "gate_decision": logging.DEBUG,
        "probe_retry": logging.WARNING,
        "gate_fail_open": logging.WARNING,
        "gate_timed_out": logging.WARNING,
        "probe_gave_up": logging.ERROR,
        "adapter_call_failed": logging.ERROR,
    }
)

# structlog's own keys: an event field with one of these names is logged as ``<name>_``.
_RESERVED = frozenset({"event", "level", "logger", "timestamp", "exc_info", "stack_info"})

bound_context = structlog.contextvars.bound_contextvars
"""Context manager: ``with bound_context(run_id=...):`` adds fields to every line inside."""

_installed: list[logging.Handler] = []


def event_name(kind: str) -> str:
    """The log event name of an event kind: ``offload_fsm.<kind>``."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    return f"{NAMESPACE}.{kind}"


def parse_level(level: int | str) -> int:
    """A logging level from a name (``"info"``) or a stdlib level number."""
    if isinstance(level, str):
        number = LEVELS.get(level.strip().lower())
        if number is None:
            raise ConfigError("log level", level, ", ".join(LEVELS))
        return number
    if isinstance(level, int) and not isinstance(level, bool) and level in LEVELS.values():
        return level
    raise ConfigError("log level", level, f"one of {', '.join(LEVELS)} or its logging number")


def configure_logging(
    *,
    json_file: str | os.PathLike[str] | None = None,
    console: bool = True,
    level: int | str = "info",
    console_stream: TextIO | None = None,
) -> None:
    """Set up logging for the program. Calling it again replaces the previous set-up.

    ``json_file``: append one JSON object per line to this file. ``console``: human-readable
    lines on ``console_stream`` (default stderr; colours only on a terminal). ``level``: the
    lowest level written, by name or number.
    """
    number = parse_level(level)
    handlers: list[logging.Handler] = []
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_file is not None:
        try:
            file_handler = logging.FileHandler(json_file, mode="a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                "log file", str(json_file), f"a writable file path ({exc.strerror})"
            ) from exc
        file_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=shared,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.dict_tracebacks,
                    redact_fields,
                    structlog.processors.JSONRenderer(),
                ],
            )
        )
        handlers.append(file_handler)
    if console:
        stream = console_stream if console_stream is not None else sys.stderr
        console_handler = logging.StreamHandler(stream)
        console_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=shared,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    redact_fields,
                    structlog.dev.ConsoleRenderer(colors=_isatty(stream)),
                ],
            )
        )
        handlers.append(console_handler)

    reset_logging()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Off so that a later configure (and structlog.testing.capture_logs) reaches loggers
        # that were already used.
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger(NAMESPACE)
    root.setLevel(number)
    root.propagate = False
    for handler in handlers:
        handler.setLevel(number)
        root.addHandler(handler)
    _installed.extend(handlers)


def redact_fields(_logger: Any, _method: str, event_dict: Any) -> Any:
    """structlog processor: every field of the line redacted (the message too)."""
    return {key: redact_value(value) for key, value in event_dict.items()}


def reset_logging() -> None:
    """Undo :func:`configure_logging`: close its handlers and restore structlog's defaults."""
    root = logging.getLogger(NAMESPACE)
    while _installed:
        handler = _installed.pop()
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.NOTSET)
    root.propagate = True
    structlog.reset_defaults()


def get_logger(component: str | None = None) -> structlog.stdlib.BoundLogger:
    """A logger named ``offload_fsm`` or ``offload_fsm.<component>``.

    Backed by the stdlib logger of that name whatever structlog's configuration, so library
    code never prints on its own before :func:`configure_logging`.
    """
    name = f"{NAMESPACE}.{component}" if component else NAMESPACE
    return cast(
        structlog.stdlib.BoundLogger,
        structlog.wrap_logger(logging.getLogger(name), wrapper_class=structlog.stdlib.BoundLogger),
    )


def event_fields(event: Event) -> dict[str, Any]:
    """The fields of ``event`` as JSON-ready values (nested records as dicts)."""
    fields: dict[str, Any] = msgspec.to_builtins(event)
    for key in _RESERVED.intersection(fields):
        fields[f"{key}_"] = fields.pop(key)
    return fields


def log_event(event: Event, logger: structlog.stdlib.BoundLogger | None = None) -> None:
    """Log one event under ``offload_fsm.<kind>`` at its kind's level (see EVENT_LEVELS)."""
    log = logger if logger is not None else get_logger("events")
    log.log(
        EVENT_LEVELS.get(event.kind, logging.INFO), event_name(event.kind), **event_fields(event)
    )


async def log_events(
    subscription: Subscription, *, logger: structlog.stdlib.BoundLogger | None = None
) -> None:
    """Bus subscriber: log every event until the bus closes."""
    log = logger if logger is not None else get_logger("events")
    async for event in subscription:
        log_event(event, log)


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if callable(isatty) else False
