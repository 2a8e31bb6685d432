"""What the orchestrator owns per engine: its spec (checked on construction) and its record.

:class:`EngineSpec` is what a caller registers; :class:`Engine` is the orchestrator's record
of it (lifecycle, recent states, what it held before its last release).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from offload_fsm.core.errors import ConfigError
from offload_fsm.core.lifecycle import Lifecycle, State
from offload_fsm.engines.base import EngineAdapter
from offload_fsm.probe.base import GpuDevice

PidsFn = Callable[[], frozenset[int]]
HISTORY_LEN = 64  # states kept per engine in Engine.history (the event log has them all)


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """One engine (or trainer) the orchestrator owns."""

    engine_id: str
    adapter: EngineAdapter
    devices: tuple[GpuDevice, ...]
    pipeline_id: str | None = None
    role: str = "engine"  # "engine" | "trainer"
    # Engines with the same non-empty group may be awake together on a shared GPU; any other
    # two engines whose GPUs overlap are never both waking/active/releasing.
    share_group: str | None = None
    initial: State = State.ACTIVE
    release_limit_bytes: int | None = None  # None: the orchestrator's default
    resume_fraction: float = 0.8
    need_free_bytes: int | None = None  # optional second wake rule
    pids: PidsFn | None = None  # the engine's process tree; default: walk /proc from the root

    def __post_init__(self) -> None:
        if not self.engine_id:
            raise ConfigError("engine_id", self.engine_id, "a non-empty string")
        if not self.devices:
            raise ConfigError(f"{self.engine_id}.devices", self.devices, "at least one GPU")
        keys = [d.key for d in self.devices]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"{self.engine_id}.devices", keys, "distinct GPUs")
        if not 0 < self.resume_fraction <= 1:
            raise ConfigError(
                f"{self.engine_id}.resume_fraction", self.resume_fraction, "a fraction in (0, 1]"
            )
        if self.initial not in (State.ACTIVE, State.SLEPT):
            raise ConfigError(f"{self.engine_id}.initial", self.initial.value, "active or slept")


@dataclass(slots=True)
class Engine:
    spec: EngineSpec
    lifecycle: Lifecycle
    resident_before: int | None = None  # max per-GPU resident bytes before the last release
    operations: int = 0
    # The latest states, bounded: an orchestrator that runs for weeks must not grow.
    history: deque[str] = field(default_factory=lambda: deque(maxlen=HISTORY_LEN))
    root_start: int | None = None  # start ticks of the root process when registered
    # Its GPUs' keys in the spec's order (the ``gpus`` of its events): the spec is frozen.
    gpus: tuple[str, ...] = field(init=False)
    id: str = field(init=False)  # the spec's engine_id (read on every event: not a property)

    def __post_init__(self) -> None:
        self.gpus = tuple(d.key for d in self.spec.devices)
        self.id = self.spec.engine_id

    @property
    def state(self) -> State:
        return self.lifecycle.state


__all__ = ["HISTORY_LEN", "Engine", "EngineSpec", "PidsFn"]
