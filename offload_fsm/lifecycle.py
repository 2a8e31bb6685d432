"""The pure lifecycle core: states, triggers and the one table of legal transitions.

Everything that decides an engine's state lives in this file (the habit of h11's
``_state.py``). No I/O, no awaits: callers await the outside world *between* transitions and
then fire a trigger, so each transition is atomic on the event loop.

``TABLE`` is the single source of truth. ``Lifecycle`` runs it through a synchronous
``transitions.Machine`` (enum states, no auto transitions, no queue); hot paths such as
replay may check against ``TABLE`` directly with :func:`next_state`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import transitions
from transitions import Machine, MachineError

from offload_fsm.errors import IllegalTransition
from offload_fsm.frozen_init import fast_frozen_init


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

# States in which an engine may hold (or be about to hold) its full GPU footprint.
AWAKE_STATES = frozenset({S.WAKING, S.ACTIVE})
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


@fast_frozen_init
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

    Every lifecycle runs on one shared ``transitions`` machine (built by ``_build_machine``)
    with a model of its own: transitions keeps a model's state on the model, so the states,
    events and transitions need not be built again per engine (a machine each was ~22 KB,
    and a run's working set grew with its engines)."""

    __slots__ = ("_model", "engine_id", "reason")

    def __init__(self, engine_id: str, initial: State = S.ACTIVE) -> None:
        self.engine_id = engine_id
        # transitions decorates a model added to a machine with trigger methods; this one
        # is never added (a machine reads and sets only its ``state``): nothing on our API.
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
        if (src, trigger) not in _TABLE:
            raise IllegalTransition(self.engine_id, src.value, trigger.value)
        try:
            ok = _EVENTS[trigger].trigger(self._model, evidence=evidence)
        except MachineError as exc:  # pragma: no cover - guarded by the table check above
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
    state: State


class _MachineState(transitions.State):
    """transitions' State, minus per-trigger overhead we do not use.

    ``name`` and ``value`` are plain attributes set once (transitions derives them through a
    property on every access, several times per trigger), and ``enter``/``exit`` return at
    once when there are no callbacks (Lifecycle registers none; transitions would still log
    and walk the empty lists). Together with :class:`_Machine`'s state lookup this halves
    the cost of a trigger.
    """

    # Shadow transitions' properties: the instance attributes set below are read instead.
    name: str = ""
    value: Any = None

    def __init__(self, name: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        self.name = name.name if isinstance(name, enum.Enum) else name
        self.value = name  # transitions' ``value``: what it was created with

    def enter(self, event_data: Any) -> None:
        if self.on_enter:
            super().enter(event_data)

    def exit(self, event_data: Any) -> None:
        if self.on_exit:
            super().exit(event_data)


class _Transition(transitions.Transition):
    """transitions' Transition, minus its debug logging and empty callback walks when the
    transition and the machine register no callbacks (conditional ones, ``recover``, take
    transitions' own path): four log calls and four walks per trigger otherwise."""

    def execute(self, event_data: Any) -> bool:
        machine = event_data.machine
        if (
            self.prepare
            or self.conditions
            or self.before
            or self.after
            or machine.before_state_change
            or machine.after_state_change
        ):
            return bool(super().execute(event_data))
        if self.dest:
            self._change_state(event_data)
        return True

    def _change_state(self, event_data: Any) -> None:
        # transitions' own, minus three state lookups, the exit/enter calls and the
        # models loop, where no state has callbacks and none is final (ours: never).
        machine = event_data.machine
        source, dest = machine.get_state(self.source), machine.get_state(self.dest)
        if source.on_exit or dest.on_enter or dest.final:
            super()._change_state(event_data)
            return
        setattr(event_data.model, machine.model_attribute, dest.value)
        event_data.state = dest


class _Event(transitions.Event):
    """transitions' Event, minus the walks and logs of machine ``prepare_event`` and
    ``finalize_event`` callbacks when there are none."""

    def trigger(self, model: Any, *args: Any, **kwargs: Any) -> bool:
        machine = self.machine
        if machine.has_queue or machine._transition_queue:
            return bool(super().trigger(model, *args, **kwargs))
        # Machine._process runs an unqueued trigger at once: without its partial.
        return self._trigger(transitions.core.EventData(None, self, machine, model, args, kwargs))

    def _trigger(self, event_data: Any) -> bool:
        machine = self.machine
        if machine.finalize_event or machine.on_exception:
            return bool(super()._trigger(event_data))
        event_data.state = machine.get_model_state(event_data.model)
        if self._is_valid_source(event_data.state):  # raises MachineError where invalid
            self._process(event_data)
        return bool(event_data.result)

    def _process(self, event_data: Any) -> bool:
        if self.machine.prepare_event:
            return bool(super()._process(event_data))
        for trans in self.transitions[event_data.state.name]:
            event_data.transition = trans
            if trans.execute(event_data):
                event_data.result = True
                break
        return False  # unused: _trigger reads event_data.result


class _Machine(Machine):
    """A synchronous ``transitions.Machine`` whose state lookup is one dict access."""

    state_cls = _MachineState
    transition_cls = _Transition
    event_cls = _Event
    _by_key: Mapping[Any, Any] = MappingProxyType({})  # filled by add_states

    def add_states(self, *args: Any, **kwargs: Any) -> None:
        super().add_states(*args, **kwargs)
        # By name (what transitions keys on) and by enum member (what the model holds).
        self._by_key = {**self.states, **{s.value: s for s in self.states.values()}}

    def get_state(self, state: Any) -> Any:
        found = self._by_key.get(state)
        return found if found is not None else super().get_state(state)


def _build_machine() -> dict[Trigger, Any]:
    """The events of the one machine every Lifecycle runs on (it has no model of its own;
    each event holds the machine)."""
    transitions: list[dict[str, Any]] = []
    for (src, trig), dsts in _TABLE.items():
        for dst in sorted(dsts, key=lambda s: s.value):
            spec: dict[str, Any] = {"trigger": trig.value, "source": src, "dest": dst}
            if len(dsts) > 1:
                spec["conditions"] = [_evidence_targets(dst)]
            transitions.append(spec)
    machine = _Machine(
        model=None,
        states=State,
        transitions=transitions,
        initial=S.ACTIVE,  # unused (no model), but keeps transitions from adding "initial"
        auto_transitions=False,
        send_event=True,
        ignore_invalid_triggers=False,
        queued=False,
        model_attribute="state",
    )
    events = machine.events
    return {t: events[t.value] for t in Trigger if t.value in events}


def _evidence_targets(dst: State) -> Any:
    def condition(event: Any) -> bool:
        evidence = event.kwargs.get("evidence")
        return isinstance(evidence, Evidence) and evidence.target is dst

    return condition


_EVENTS = _build_machine()


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
