"""The pure lifecycle core: states, triggers and the one table of legal transitions.

Everything that decides an engine's state lives in this file (the habit of h11's
``_state.py``). No I/O, no awaits: callers await the outside world *between* transitions and
then fire a trigger, so each transition is atomic on the event loop.

``TABLE`` is the single source of truth. ``Lifecycle`` runs it through a synchronous
``transitions.Machine`` through its public API (enum states, no auto transitions, no queue;
its ``MachineError`` becomes :class:`IllegalTransition`); replay checks a log against
``TABLE`` directly with :func:`next_state`, without a machine.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from transitions import Machine, MachineError

from offload_fsm.core.errors import IllegalTransition


class State(str, enum.Enum):
    ACTIVE = "active"  # serving (engine) or training (trainer); holds its GPU memory
    RELEASING = "releasing"  # release asked; memory not yet proven gone
    SLEPT = "slept"  # memory released and the release gate passed
    GATED = "gated"  # wake asked; waiting for whole-GPU residual <= threshold
    WAKING = "waking"  # gate opened; resume in flight
    FAILED = "failed"  # something went wrong; needs explicit evidence to recover

    def __str__(self) -> str:
        return self.value


class Trigger(str, enum.Enum):
    RELEASE = "release"
    RELEASED = "released"
    REQUEST_WAKE = "request_wake"
    GATE_OPEN = "gate_open"
    GATE_TIMEOUT = "gate_timeout"
    CANCEL_WAKE = "cancel_wake"
    WOKEN = "woken"
    FAIL = "fail"
    RECOVER = "recover"

    def __str__(self) -> str:
        return self.value


S, T = State, Trigger
_NOT_FAILED = tuple(s for s in State if s is not S.FAILED)

# (source, trigger) -> the destinations it may lead to. Where there are two, the caller's
# evidence picks one (``recover``). ``gate_timeout`` goes back to ``slept``: nothing was
# resumed, the engine's memory is still released, and the refusal is not an engine fault;
# the caller still gets a GateTimeout with the readings.
_TABLE: dict[tuple[State, Trigger], frozenset[State]] = {
    (S.ACTIVE, T.RELEASE): frozenset({S.RELEASING}),
    (S.RELEASING, T.RELEASED): frozenset({S.SLEPT}),
    (S.SLEPT, T.REQUEST_WAKE): frozenset({S.GATED}),
    (S.GATED, T.GATE_OPEN): frozenset({S.WAKING}),
    (S.GATED, T.GATE_TIMEOUT): frozenset({S.SLEPT}),
    (S.GATED, T.CANCEL_WAKE): frozenset({S.SLEPT}),
    (S.WAKING, T.WOKEN): frozenset({S.ACTIVE}),
    (S.FAILED, T.RECOVER): frozenset({S.SLEPT, S.ACTIVE}),
    **{(s, T.FAIL): frozenset({S.FAILED}) for s in _NOT_FAILED},
}
TABLE: Mapping[tuple[State, Trigger], frozenset[State]] = MappingProxyType(_TABLE)

# Who holds GPU memory, defined once here and nested: every awake state occupies its GPUs,
# every occupying state holds memory.
# States in which an engine may hold (or be about to hold) its full GPU footprint.
AWAKE_STATES = frozenset({S.WAKING, S.ACTIVE})
# States in which an engine holds, or may be about to hold, memory on its GPUs: a wake of a
# conflicting engine on a shared GPU waits while any of these is current.
OCCUPYING_STATES = AWAKE_STATES | {S.RELEASING}
# States in which an engine's memory may still be on its GPUs: a failed engine's memory is
# unknown, so replay never counts a GPU's memory as residual while one is there.
HOLDING_STATES = OCCUPYING_STATES | {S.FAILED}
# States a finished run may leave an engine in (replay flags anything else as truncated).
FINAL_STATES = frozenset({S.ACTIVE, S.SLEPT, S.FAILED})


def next_state(state: State, trigger: Trigger, dst: State | None = None) -> State:
    """The state ``trigger`` leads to from ``state``, checked against ``TABLE``.

    ``dst`` must be given where the table allows several destinations and must be one of
    them where given. Raises ``KeyError``-free :class:`IllegalTransition` (engine ``?``).
    """
    options = _TABLE.get((state, trigger))
    if options is None:
        raise IllegalTransition("?", state.value, trigger.value)
    if dst is None:
        if len(options) != 1:
            raise IllegalTransition("?", state.value, trigger.value, "destination required")
        return next(iter(options))
    if dst not in options:
        raise IllegalTransition("?", state.value, trigger.value, f"cannot lead to {dst.value!r}")
    return dst


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why a ``failed`` engine may be recovered: the state measurements show it is in.

    ``observed`` is free text kept in the event log (e.g. "resident 0.6 GiB <= 1.1 GiB").
    """

    target: State
    observed: str

    def __post_init__(self) -> None:
        if self.target not in (S.SLEPT, S.ACTIVE):
            raise ValueError(f"recover evidence must target slept or active, not {self.target}")
        if not self.observed.strip():
            raise ValueError("recover evidence must say what was observed")


@dataclass(frozen=True, slots=True)
class Step:
    """One transition that happened."""

    engine_id: str
    src: State
    dst: State
    trigger: Trigger
    reason: str | None


class Lifecycle:
    """One engine's state machine. Synchronous and pure; not thread-safe by design.

    Every lifecycle is driven by one shared ``transitions.Machine`` built from ``TABLE``
    (:data:`_MACHINE`): transitions keeps a model's state on the model, so the states, events
    and transitions are described once for the whole run, however many engines it has."""

    __slots__ = ("_model", "engine_id", "reason")

    def __init__(self, engine_id: str, initial: State = S.ACTIVE) -> None:
        self.engine_id = engine_id
        # The machine reads and sets only the model's ``state``. The model is never added to
        # the machine (``add_model`` would hang trigger methods on it and keep it alive for
        # as long as the machine); each trigger names it instead (``Event.trigger(model)``).
        self._model = _Model()
        self._model.state = State(initial)
        self.reason: str | None = None  # why the engine is failed, while it is

    @property
    def state(self) -> State:
        state: State = self._model.state
        return state

    def fire(
        self, trigger: Trigger, *, reason: str | None = None, evidence: Evidence | None = None
    ) -> Step:
        """Apply ``trigger``. Illegal -> :class:`IllegalTransition`, state unchanged."""
        src = self.state
        if trigger is T.FAIL and not reason:
            raise IllegalTransition(
                self.engine_id, src.value, trigger.value, "a reason is required"
            )
        if trigger is T.RECOVER and evidence is None:
            raise IllegalTransition(
                self.engine_id, src.value, trigger.value, "explicit evidence is required"
            )
        # Any: transitions 0.9.2's stubs type **kwargs of Event.trigger as one dict each.
        event: Any = _MACHINE.events.get(trigger.value)
        if event is None:  # pragma: no cover - every trigger has a row in TABLE
            raise IllegalTransition(self.engine_id, src.value, trigger.value)
        try:
            ok = event.trigger(self._model, evidence=evidence)
        except MachineError as exc:  # no row of TABLE for (state, trigger)
            raise IllegalTransition(self.engine_id, src.value, trigger.value) from exc
        if not ok:  # a conditional transition found no matching evidence
            raise IllegalTransition(self.engine_id, src.value, trigger.value, "evidence rejected")
        if trigger is T.FAIL:
            self.reason = reason
        elif trigger is T.RECOVER:
            self.reason = None
        return Step(self.engine_id, src, self.state, trigger, reason)

    def can(self, trigger: Trigger) -> bool:
        return (self.state, trigger) in _TABLE

    def __repr__(self) -> str:
        return f"Lifecycle({self.engine_id!r}, state={self.state.value})"


class _Model:
    """What the machine drives: a holder of one engine's ``state``."""

    __slots__ = ("state",)

    state: State


def _build_machine() -> Machine:
    """The one machine every Lifecycle runs on, built from ``TABLE`` (it has no model of its
    own: each trigger names the model it moves)."""
    specs: list[dict[str, Any]] = []
    for (src, trig), dsts in _TABLE.items():
        for dst in sorted(dsts, key=lambda s: s.value):
            spec: dict[str, Any] = {"trigger": trig.value, "source": src, "dest": dst}
            if len(dsts) > 1:  # the caller's evidence picks the destination
                spec["conditions"] = [_evidence_targets(dst)]
            specs.append(spec)
    return Machine(
        model=None,
        states=State,
        transitions=specs,
        initial=S.ACTIVE,  # unused (no model), but keeps transitions from adding "initial"
        auto_transitions=False,
        send_event=True,
        ignore_invalid_triggers=False,
        queued=False,
        model_attribute="state",
    )


def _evidence_targets(dst: State) -> Any:
    def condition(event: Any) -> bool:
        evidence = event.kwargs.get("evidence")
        return isinstance(evidence, Evidence) and evidence.target is dst

    return condition


_MACHINE = _build_machine()


def mermaid() -> str:
    """The state diagram, generated from ``TABLE`` (used by docs/lifecycle.md)."""
    lines = ["stateDiagram-v2", f"    [*] --> {S.ACTIVE.value}"]
    for (src, trig), dsts in _TABLE.items():
        if trig is T.FAIL:
            continue
        for dst in sorted(dsts, key=lambda s: s.value):
            lines.append(f"    {src.value} --> {dst.value}: {trig.value}")
    lines.append(f"    note right of {S.FAILED.value}: fail (with a reason) from every other state")
    return "\n".join(lines)
