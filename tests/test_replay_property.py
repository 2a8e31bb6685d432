"""Property tests: replay(log(run)) reproduces every engine's state, at the end and at any
point; taking a wake's gate decision out of a correct log is always caught."""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offload_fsm.events.kinds import GateDecision, Transition
from offload_fsm.replay import Rule, replay_path
from offload_fsm.testing.log_builder import write_events
from offload_fsm.testing.synthetic import SimConfig, simulate

configs = st.builds(
    SimConfig,
    steps=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    settle=st.integers(1, 3),
    phase_ticks=st.integers(1, 4),
    gate_timeout_ticks=st.integers(4, 12),  # > settle
    co_tenant_p=st.sampled_from([0.0, 0.5, 1.0]),
    release_fail_p=st.sampled_from([0.0, 0.3]),
    wake_fail_p=st.sampled_from([0.0, 0.3]),
)
fast = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(cfg=configs, cut=st.floats(0.0, 1.0))
def test_replay_reproduces_every_engines_state(cfg: SimConfig, cut: float) -> None:
    events, outcome = simulate(cfg, record_history=True)
    with TemporaryDirectory() as tmp:
        log = write_events(Path(tmp) / "run.jsonl", events)
        result = replay_path(log)
        assert result.ok, [str(v) for v in result.violations[:5]]
        assert not result.truncated
        assert {e: t.state for e, t in result.engines.items()} == outcome.final_states
        assert result.events == outcome.events
        assert sum(len(t.gate_waits) for t in result.engines.values()) == sum(
            1 for e in events if isinstance(e, Transition) and e.trigger == "gate_open"
        )

        # At any point: the state of every engine is the simulator's state at that seq.
        until = max(1, int(cut * outcome.events))
        expected = {e: s for e, s in _initial(events).items()}
        for seq, eid, state in outcome.history:
            if seq <= until:
                expected[eid] = state
        partial = replay_path(log, until=until)
        assert {e: t.state for e, t in partial.engines.items()} == {
            e: s for e, s in expected.items() if e in partial.engines
        }


def _initial(events: list[object]) -> dict[str, str]:
    from offload_fsm.events.kinds import EngineRegistered

    return {
        e.engine_id: e.initial_state
        for e in events
        if isinstance(e, EngineRegistered) and e.engine_id is not None
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs, pick=st.integers(0, 10_000))
def test_dropping_the_opening_gate_decision_is_always_caught(cfg: SimConfig, pick: int) -> None:
    events, _ = simulate(cfg)
    opened = [
        i
        for i, e in enumerate(events)
        if isinstance(e, GateDecision) and e.gate == "wake" and e.opened
    ]
    victim = opened[pick % len(opened)]
    wake = next(
        i
        for i in range(victim + 1, len(events))
        if isinstance(events[i], Transition)
        and events[i].engine_id == events[victim].engine_id
        and events[i].trigger == "gate_open"  # type: ignore[attr-defined]
    )
    with TemporaryDirectory() as tmp:
        log = write_events(Path(tmp) / "run.jsonl", events[:victim] + events[victim + 1 :])
        result = replay_path(log)
    found = [(v.rule, v.seq, v.engine_id) for v in result.violations]
    assert found == [(Rule.WAKE_GATE, events[wake].seq, events[victim].engine_id)]
