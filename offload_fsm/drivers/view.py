"""A bus subscriber that keeps the run's state from events, and waits on it.

Drivers ask ``await view.wait_until(lambda v: ...)`` (e.g. "every engine on GPUs X slept")
instead of querying engines; the progress printer renders from the same view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from offload_fsm.bus import Subscription
from offload_fsm.events import (
    EngineRegistered,
    Event,
    GateDecision,
    PhaseChanged,
    Transition,
)


@dataclass
class EngineView:
    engine_id: str
    pipeline_id: str | None
    gpus: tuple[str, ...]
    state: str
    gate_detail: str = ""  # latest gate progress while gated
    transitions: int = 0


@dataclass
class RunView:
    engines: dict[str, EngineView] = field(default_factory=dict)
    phases: dict[str, tuple[int, str]] = field(default_factory=dict)  # pipeline -> (step, phase)
    events_seen: int = 0
    _changed: anyio.Event | None = None  # created only while someone waits

    def apply(self, event: Event) -> None:
        self.events_seen += 1
        if isinstance(event, EngineRegistered):
            self.engines[event.engine_id or ""] = EngineView(
                event.engine_id or "", event.pipeline_id, event.gpus, event.initial_state
            )
        elif isinstance(event, Transition):
            ev = self.engines.get(event.engine_id or "")
            if ev is not None:
                ev.state = event.dst
                ev.transitions += 1
                if event.dst != "gated":
                    ev.gate_detail = ""
        elif isinstance(event, GateDecision) and event.gate == "wake":
            ev = self.engines.get(event.engine_id or "")
            if ev is not None:
                ev.gate_detail = event.detail
        elif isinstance(event, PhaseChanged):
            self.phases[event.pipeline_id or ""] = (event.step, event.phase)
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def states_on(self, gpus: set[str], pipeline: str | None = None) -> dict[str, str]:
        return {
            e.engine_id: e.state
            for e in self.engines.values()
            if gpus.intersection(e.gpus) and (pipeline is None or e.pipeline_id == pipeline)
        }

    async def wait_until(self, predicate: Callable[[RunView], bool]) -> None:
        while not predicate(self):
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    async def follow(
        self, sub: Subscription, on_event: Callable[[Event], None] | None = None
    ) -> None:
        async for event in sub:
            self.apply(event)
            if on_event is not None:
                on_event(event)
