"""Where an interrupted operation leaves an engine, and the reason its transition gives.

A wake that ends while ``gated`` goes back to ``slept`` (no engine call was made): a gate
refusal as ``gate_timeout``, anything else as ``cancel_wake``. An operation that ends while
``releasing`` or ``waking`` goes to ``failed``: the engine's memory state is unknown.

A reason quotes the error, so it is redacted (:mod:`offload_fsm.core.redact`): an error of an
adapter outside this package may name a URL with its password or an API key.
"""

from __future__ import annotations

from offload_fsm.core.errors import GateError
from offload_fsm.core.lifecycle import Trigger
from offload_fsm.core.redact import redact


def gated_exit(exc: BaseException) -> tuple[Trigger, str]:
    """The trigger and reason that take a ``gated`` engine back out when its gate ends in
    ``exc``."""
    if isinstance(exc, GateError):
        return Trigger.GATE_TIMEOUT, redact(str(exc))
    if isinstance(exc, Exception):
        return Trigger.CANCEL_WAKE, redact(f"wake gate aborted: {type(exc).__name__}: {exc}")
    return Trigger.CANCEL_WAKE, "wake cancelled while gated"


def failure_reason(exc: BaseException, during: str) -> str:
    """Why an engine went to ``failed`` when ``during`` (release or wake) ended in ``exc``."""
    if isinstance(exc, Exception):
        return redact(f"{during} failed: {type(exc).__name__}: {exc}")
    return f"cancelled during {during}: the engine's memory state is unknown"


__all__ = ["failure_reason", "gated_exit"]
