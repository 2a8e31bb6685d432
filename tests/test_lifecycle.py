from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload_fsm.core.errors import IllegalTransition
from offload_fsm.core.lifecycle import (
    TABLE,
    Evidence,
    Lifecycle,
    State,
    Trigger,
    mermaid,
    next_state,
)


def _fire(lc: Lifecycle, trigger: Trigger, dst: State | None = None) -> None:
    if trigger is Trigger.FAIL:
        lc.fire(trigger, reason="test")
    elif trigger is Trigger.RECOVER:
        lc.fire(trigger, evidence=Evidence(dst or State.SLEPT, "measured"))
    else:
        lc.fire(trigger)


@pytest.mark.parametrize(("state", "trigger"), list(itertools.product(State, Trigger)))
def test_matrix_matches_table(state: State, trigger: Trigger) -> None:
    lc = Lifecycle("e0", initial=state)
    allowed = TABLE.get((state, trigger))
    if allowed is None:
        with pytest.raises(IllegalTransition) as info:
            _fire(lc, trigger)
        assert info.value.engine_id == "e0"
        assert info.value.state == state.value
        assert info.value.trigger == trigger.value
        assert lc.state is state  # unchanged
    else:
        for dst in allowed:
            lc = Lifecycle("e0", initial=state)
            _fire(lc, trigger, dst)
            assert lc.state is dst


def test_double_wake_of_active_engine_is_refused() -> None:
    lc = Lifecycle("trainer")
    with pytest.raises(IllegalTransition, match=r"request_wake.*active"):
        lc.fire(Trigger.REQUEST_WAKE)
    assert lc.state is State.ACTIVE


def test_fail_needs_reason_and_recover_needs_evidence() -> None:
    lc = Lifecycle("e0")
    with pytest.raises(IllegalTransition, match="reason"):
        lc.fire(Trigger.FAIL)
    lc.fire(Trigger.FAIL, reason="HTTP 500")
    assert lc.reason == "HTTP 500"
    with pytest.raises(IllegalTransition, match="evidence"):
        lc.fire(Trigger.RECOVER)
    assert lc.state is State.FAILED
    lc.fire(Trigger.RECOVER, evidence=Evidence(State.SLEPT, "resident 0.6 GiB"))
    assert lc.state is State.SLEPT
    assert lc.reason is None


def test_evidence_must_target_slept_or_active() -> None:
    with pytest.raises(ValueError, match="slept or active"):
        Evidence(State.WAKING, "x")


def test_gate_timeout_returns_to_slept() -> None:
    lc = Lifecycle("e0", initial=State.GATED)
    lc.fire(Trigger.GATE_TIMEOUT)
    assert lc.state is State.SLEPT


def test_next_state_agrees_with_machine() -> None:
    for (state, trigger), dsts in TABLE.items():
        for dst in dsts:
            assert next_state(state, trigger, dst) is dst
    with pytest.raises(IllegalTransition):
        next_state(State.ACTIVE, Trigger.WOKEN)
    with pytest.raises(IllegalTransition, match="destination required"):
        next_state(State.FAILED, Trigger.RECOVER)


def test_mermaid_lists_every_non_fail_edge() -> None:
    text = mermaid()
    for (state, trigger), dsts in TABLE.items():
        if trigger is Trigger.FAIL:
            continue
        for dst in dsts:
            assert f"{state.value} --> {dst.value}: {trigger.value}" in text


@given(st.lists(st.sampled_from(list(Trigger)), max_size=60))
def test_random_trigger_sequences_stay_in_table(triggers: list[Trigger]) -> None:
    lc = Lifecycle("e0")
    for trigger in triggers:
        before = lc.state
        try:
            _fire(lc, trigger)
        except IllegalTransition:
            assert lc.state is before
            assert (before, trigger) not in TABLE
        else:
            assert lc.state in TABLE[(before, trigger)]
        assert lc.state in State


def test_lifecycles_sharing_one_machine_keep_their_own_state() -> None:
    a, b = Lifecycle("a"), Lifecycle("b", initial=State.SLEPT)
    a.fire(Trigger.RELEASE)
    b.fire(Trigger.REQUEST_WAKE)
    a.fire(Trigger.FAIL, reason="test")
    assert (a.state, b.state) == (State.FAILED, State.GATED)
    assert (a.reason, b.reason) == ("test", None)
    with pytest.raises(IllegalTransition):
        b.fire(Trigger.RELEASE)  # gated, whatever a's state
    assert Lifecycle("c").state is State.ACTIVE


def test_an_initial_state_that_is_not_a_state_is_refused() -> None:
    with pytest.raises(ValueError, match="bogus"):
        Lifecycle("a", initial="bogus")  # type: ignore[arg-type]


def test_who_holds_memory_is_defined_once_and_nested() -> None:
    from offload_fsm.core.lifecycle import AWAKE_STATES, HOLDING_STATES, OCCUPYING_STATES
    from offload_fsm.replay.rules import AWAKE, HOLDING

    assert AWAKE_STATES < OCCUPYING_STATES < HOLDING_STATES
    assert set(OCCUPYING_STATES - AWAKE_STATES) == {State.RELEASING}
    assert set(HOLDING_STATES - OCCUPYING_STATES) == {State.FAILED}
    assert not HOLDING_STATES & {State.SLEPT, State.GATED}
    # replay's string views are the same sets, not definitions of their own
    assert {s.value for s in AWAKE_STATES} == AWAKE
    assert {s.value for s in HOLDING_STATES} == HOLDING
