"""What crosses the wire from a node's actor, and how node failures become typed errors.

An actor answers with a :class:`Reply` (a value, or a probe error by type name); the driver
types it back, maps Ray's own exceptions, and combines several nodes' failures into one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from offload_fsm.core.errors import (
    BackendUnavailable,
    DeviceIdError,
    DeviceUnhealthy,
    ProbeError,
    ProbeTimeout,
    TransientProbeError,
)


@dataclass(frozen=True, slots=True)
class Reply:
    """An actor's answer: a value, or a probe error by type name (typed on the driver)."""

    value: Any = None
    error_type: str | None = None
    error: str = ""


_ERROR_TYPES: dict[str, type[ProbeError]] = {
    cls.__name__: cls
    for cls in (
        ProbeError,
        BackendUnavailable,
        TransientProbeError,
        ProbeTimeout,
        DeviceUnhealthy,
        DeviceIdError,
    )
}


def _failure(exc: ProbeError) -> Reply:
    name = type(exc).__name__
    if name not in _ERROR_TYPES:  # a subclass defined elsewhere: keep its nearest known kind
        name = next(c.__name__ for c in type(exc).__mro__ if c.__name__ in _ERROR_TYPES)
    return Reply(error_type=name, error=str(exc))


_SEVERITY = (  # the first type present wins when several nodes fail
    DeviceUnhealthy,
    BackendUnavailable,
    DeviceIdError,
    ProbeError,
    TransientProbeError,
    ProbeTimeout,
)


def combine_failures(failures: Mapping[str, ProbeError]) -> ProbeError:
    """One error for several nodes: the most severe type, naming every node's failure."""
    if len(failures) == 1:
        return next(iter(failures.values()))

    def rank(t: type[ProbeError]) -> int:  # by the most specific kind the type is
        return next(_SEVERITY.index(c) for c in t.__mro__ if c in _SEVERITY)

    worst = min((type(e) for e in failures.values()), key=rank)
    text = "; ".join(f"{e}" for _, e in sorted(failures.items()))
    return worst(f"{len(failures)} nodes failed: {text}")


def _map_ray_error(ray: Any, node: str, exc: BaseException) -> ProbeError:
    rex = ray.exceptions
    if isinstance(exc, rex.ActorUnavailableError):  # restarting (max_restarts > 0)
        return TransientProbeError(f"node {node}: probe actor unavailable for now: {exc}")
    if isinstance(exc, (rex.RayActorError, rex.NodeDiedError)):
        return BackendUnavailable(
            f"node {node}: probe actor is dead, its GPUs cannot be measured "
            f"({type(exc).__name__}: {_first_line(exc)})"
        )
    return ProbeError(f"node {node}: probe call failed: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
