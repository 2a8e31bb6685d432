"""The one error hierarchy of offload_fsm.

    OffloadFsmError
    ├── ConfigError                 bad env value, CLI flag, config file, topology
    ├── IllegalTransition           a trigger the lifecycle table does not allow
    ├── EventDecodeError            a malformed or unsupported event (log) line
    ├── EventLogError               writing or reading an event log file failed (I/O)
    ├── ProbeError                  measuring GPU memory failed
    │   ├── BackendUnavailable      NVML / nvidia-smi cannot be used at all (no retry)
    │   ├── TransientProbeError     timeout / unknown / insufficient size (retried)
    │   │   └── ProbeTimeout        a probe call did not answer before its deadline
    │   ├── DeviceUnhealthy         GPU lost or needs a reset (loud, no retry)
    │   └── DeviceIdError           a GPU id that is unknown, ambiguous or duplicated
    ├── GateError
    │   ├── GateTimeout             the condition did not hold in time (carries readings)
    │   └── GateUnmeasurable        memory could not be measured and the gate failed closed
    ├── EngineError                 an engine/adapter call failed (engine moved to `failed`)
    │   ├── EngineCallTimeout
    │   └── EngineUnreachable
    └── MissingExtra                an optional feature's package is not installed

Library code maps foreign errors (pynvml, httpx, OSError) into this tree at the boundary with
``raise ... from``; callers never need to import pynvml or httpx to handle failures.
"""

from __future__ import annotations

from typing import Any


class OffloadFsmError(Exception):
    """Base class of every error offload_fsm raises on purpose."""


class ConfigError(OffloadFsmError, ValueError):
    """A user-supplied value is invalid. The message names the input and what is accepted."""

    def __init__(self, name: str, value: object, accepted: str) -> None:
        self.name = name
        self.value = value
        self.accepted = accepted
        super().__init__(f"{name}={value!r} is invalid: expected {accepted}")


class IllegalTransition(OffloadFsmError):
    """A trigger that the lifecycle table does not allow from the engine's current state."""

    def __init__(self, engine_id: str, state: str, trigger: str, detail: str = "") -> None:
        self.engine_id = engine_id
        self.state = state
        self.trigger = trigger
        msg = f"engine {engine_id!r}: trigger {trigger!r} is illegal in state {state!r}"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class EventDecodeError(OffloadFsmError, ValueError):
    """An event line could not be decoded. ``line`` is 1-based where known."""

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None) -> None:
        self.line = line
        self.field = field
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}{message}")


class EventLogError(OffloadFsmError):
    """Writing (or reading) an event log file failed at the OS level (disk full, I/O error)."""


class ProbeError(OffloadFsmError):
    """Measuring GPU memory failed."""


class BackendUnavailable(ProbeError):
    """The probe backend cannot be used on this machine at all (library or binary missing)."""


class TransientProbeError(ProbeError):
    """A probe call failed in a way that may succeed on retry."""


class ProbeTimeout(TransientProbeError):
    """A probe call did not answer before its deadline; a hung driver call is abandoned."""


class DeviceUnhealthy(ProbeError):
    """The GPU reports it is lost or needs a reset: nothing measured on it can be trusted."""


class DeviceIdError(ProbeError, ValueError):
    """A user-supplied GPU id is unknown, ambiguous, malformed or duplicated."""


class GateError(OffloadFsmError):
    """A probe gate did not open."""


class GateTimeout(GateError):
    """The gate's condition did not hold (settled) before its deadline.

    ``readings`` maps GPU id -> last measured bytes (None = unknown); ``report`` is the
    attribution report (or None when none could be made).
    """

    def __init__(
        self,
        message: str,
        *,
        gate: str,
        engine_id: str | None,
        readings: dict[str, int | None],
        threshold_bytes: int | None,
        report: Any = None,
    ) -> None:
        self.gate = gate
        self.engine_id = engine_id
        self.readings = readings
        self.threshold_bytes = threshold_bytes
        self.report = report
        super().__init__(message)


class GateUnmeasurable(GateError):
    """The probe failed past its retries and the gate stayed closed (fail closed)."""


class EngineError(OffloadFsmError):
    """An engine or trainer call failed; the engine was moved to ``failed``."""

    def __init__(self, engine_id: str, call: str, message: str) -> None:
        self.engine_id = engine_id
        self.call = call
        super().__init__(f"engine {engine_id!r}: {call} failed: {message}")


class EngineCallTimeout(EngineError):
    """An engine call did not answer within its timeout."""


class EngineUnreachable(EngineError):
    """The engine's endpoint refused or dropped the connection."""


class MissingExtra(OffloadFsmError):
    """An optional feature needs a package from an extra that is not installed."""

    def __init__(self, feature: str, module: str, extra: str) -> None:
        self.feature = feature
        self.module = module
        self.extra = extra
        super().__init__(
            f"{feature} needs {module}, which is not installed: pip install 'offload-fsm[{extra}]'"
        )


def first_error(
    exc: BaseException, types: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException | None:
    """``exc`` itself, or the first exception of ``types`` inside it (exception groups from
    task groups, ``__cause__``/``__context__`` chains); None when there is none."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, types):
            return e
        stack.extend(getattr(e, "exceptions", ()))
        for linked in (e.__cause__, e.__context__):
            if linked is not None:
                stack.append(linked)
    return None
