"""A bus subscriber that keeps the run's state from events, and waits on it.

Drivers ask ``await view.wait_until(lambda v: ..., watch=engine_ids)`` (e.g. "every engine
on GPUs X slept") instead of querying engines; the progress printer renders from the same view.
A waiter that names the engines its predicate reads is woken only by events about them: with
hundreds of pipelines waiting, a broadcast on every event made each event cost O(waiters).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio

from offload_fsm.events.bus import Subscription
from offload_fsm.events.kinds import (
    AdapterCallFinished,
    AdapterCallStarted,
    AttributionReport,
    EngineRegistered,
    Event,
    GateDecision,
    MemorySample,
    PhaseChanged,
    ProbeRetry,
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
    _changed: anyio.Event | None = None  # unkeyed waiters; created only while someone waits
    _watchers: dict[str, set[anyio.Event]] = field(default_factory=dict)  # engine -> waiters

    def apply(self, event: Event) -> None:
        self.events_seen += 1
        kind = type(event)
        update = _UPDATES.get(kind, _UNKNOWN)
        if update is _UNKNOWN:
            update = _UPDATES[kind] = _update_for(kind)
        if update is not None:
            update(self, event)
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        if self._watchers and event.engine_id is not None:
            for woken in self._watchers.pop(event.engine_id, ()):
                woken.set()

    @staticmethod
    def wants(event: Event) -> bool:
        """The filter of a view's bus subscription: False for the kinds that change nothing
        a view holds nor its progress printer shows (engine calls that went through, memory
        samples, attribution reports, probe retries, release and resume gate decisions).
        Most of a step's events are these; delivered, each would wake the view's waiters for
        nothing. Kinds not named here (new ones too) are delivered."""
        if isinstance(event, GateDecision):
            return event.gate == "wake"
        return type(event) not in _QUIET_KINDS

    def _registered(self, event: EngineRegistered) -> None:
        self.engines[event.engine_id or ""] = EngineView(
            event.engine_id or "", event.pipeline_id, event.gpus, event.initial_state
        )

    def _transition(self, event: Transition) -> None:
        ev = self.engines.get(event.engine_id or "")
        if ev is not None:
            ev.state = event.dst
            ev.transitions += 1
            if event.dst != "gated":
                ev.gate_detail = ""

    def _gate_decision(self, event: GateDecision) -> None:
        if event.gate == "wake":
            ev = self.engines.get(event.engine_id or "")
            if ev is not None:
                ev.gate_detail = event.detail

    def _phase(self, event: PhaseChanged) -> None:
        self.phases[event.pipeline_id or ""] = (event.step, event.phase)

    def states_on(self, gpus: set[str], pipeline: str | None = None) -> dict[str, str]:
        return {
            e.engine_id: e.state
            for e in self.engines.values()
            if gpus.intersection(e.gpus) and (pipeline is None or e.pipeline_id == pipeline)
        }

    async def wait_until(
        self, predicate: Callable[[RunView], bool], watch: Iterable[str] | None = None
    ) -> None:
        """Return once ``predicate(view)`` holds. ``watch``: the engine ids the predicate
        reads; the waiter then re-checks only after an event about one of them (a predicate
        that reads anything else must leave ``watch`` out and re-checks on every event)."""
        keys = None if watch is None else tuple(watch)
        while not predicate(self):
            if keys is None:
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()
                continue
            if not keys:
                raise ValueError("wait_until: watch names no engine, so nothing could wake it")
            woken = anyio.Event()
            for key in keys:
                self._watchers.setdefault(key, set()).add(woken)
            try:
                await woken.wait()
            finally:
                for key in keys:  # drop it where another watched engine did not fire
                    waiting = self._watchers.get(key)
                    if waiting is not None:
                        waiting.discard(woken)
                        if not waiting:
                            del self._watchers[key]

    async def follow(
        self, sub: Subscription, on_event: Callable[[Event], None] | None = None
    ) -> None:
        async for first in sub:
            for event in (first, *sub.take_queued()):  # what else is queued, in one step
                self.apply(event)
                if on_event is not None:
                    on_event(event)


# What each event kind changes in a RunView (None: nothing but the waiters): looked up by
# the event's type, one dict access instead of an isinstance chain per event. Subclasses of
# these kinds are added on first sight (``_update_for``).
_UPDATE_BY_KIND: tuple[tuple[type[Event], Callable[[RunView, Any], None]], ...] = (
    (EngineRegistered, RunView._registered),
    (Transition, RunView._transition),
    (GateDecision, RunView._gate_decision),
    (PhaseChanged, RunView._phase),
)
_QUIET_KINDS: frozenset[type[Event]] = frozenset(
    {AdapterCallStarted, AdapterCallFinished, MemorySample, AttributionReport, ProbeRetry}
)
_UPDATES: dict[type[Event], Callable[[RunView, Any], None] | None] = dict(_UPDATE_BY_KIND)
_UNKNOWN: Any = object()  # a kind not seen yet


def _update_for(kind: type[Event]) -> Callable[[RunView, Any], None] | None:
    for base, update in _UPDATE_BY_KIND:
        if issubclass(kind, base):
            return update
    return None
