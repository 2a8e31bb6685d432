"""The testing kit on its own: faults by name, watched trainers, router hooks, and the
assertions' messages (each names the event, the engine and the rule)."""

from __future__ import annotations

import anyio
import pytest

from offload_fsm.core.errors import ConfigError, DeviceUnhealthy, EngineError, GateTimeout
from offload_fsm.core.lifecycle import State
from offload_fsm.events import codec
from offload_fsm.testing import (
    EventLog,
    LogBuilder,
    RuleBroken,
    World,
    assert_no_wake_over_threshold,
    assert_replays_clean,
    assert_transitions,
)
from offload_fsm.testing.log_builder import incident_log


async def test_a_late_release_delays_the_trainer_until_the_memory_drops(fsm_world: World) -> None:
    await fsm_world.sglang("e0", gpus=[0])
    await fsm_world.sim_trainer("t0", gpus=[0])
    fsm_world.inject("late_release", engine="e0", delay_s=5.0)
    await fsm_world.orchestrator.release("e0")  # the release gate waits for the memory
    assert fsm_world.clock.now() >= 5.0
    assert fsm_world.engines["e0"].resident_bytes() == fsm_world.engines["e0"].footprint.context
    await fsm_world.orchestrator.wake("t0")
    log = await fsm_world.finish()
    assert_transitions(log, "t0", ["gated", "waking", "active"])
    assert_no_wake_over_threshold(log)
    assert_replays_clean(log)


@pytest.mark.fsm_world(gate_timeout_s=10)
async def test_stuck_memory_keeps_the_gate_shut(fsm_world: World) -> None:
    await fsm_world.sglang("e0", gpus=[0])
    await fsm_world.sim_trainer("t0", gpus=[0])
    fsm_world.inject("stuck_memory", engine="e0")
    with pytest.raises(GateTimeout, match="release gate"):  # the memory stayed: failed
        await fsm_world.orchestrator.release("e0")
    assert fsm_world.state("e0") is State.FAILED
    assert_transitions(await fsm_world.finish(), "e0", ["releasing", "failed"])


async def test_the_demo_fail_spec_fails_that_call(fsm_world: World) -> None:
    await fsm_world.sglang("p1.engine0", gpus=[0, 1], awake=False)
    fsm_world.fail("p1.engine0:resume:1")
    with pytest.raises(EngineError, match=r"p1\.engine0"):
        await fsm_world.orchestrator.wake("p1.engine0")
    log = await fsm_world.finish()
    assert_transitions(log, "p1.engine0", ["gated", "waking", "failed"])
    assert_replays_clean(log)  # a failed call, logged as such, breaks no rule


@pytest.mark.fsm_world(gate_timeout_s=20)
async def test_a_cotenant_holds_the_wake_until_it_leaves(fsm_world: World) -> None:
    await fsm_world.sim_trainer("t0", gpus=[1])
    fsm_world.inject("cotenant", gpu=1, gib=12, arrive_s=0.0, leave_s=7.0)
    await fsm_world.orchestrator.wake("t0")
    assert fsm_world.clock.now() >= 7.0
    log = await fsm_world.finish()
    assert_no_wake_over_threshold(log)


@pytest.mark.fsm_world(gate_timeout_s=5)
async def test_a_cotenant_that_stays_times_the_gate_out(fsm_world: World) -> None:
    await fsm_world.sim_trainer("t0", gpus=[1])
    fsm_world.inject("cotenant", gpu=1, gib=12)
    with pytest.raises(GateTimeout):
        await fsm_world.orchestrator.wake("t0")
    assert_transitions(await fsm_world.finish(), "t0", ["gated", "slept"])


async def test_an_nvml_error_is_injected_at_the_next_poll(fsm_world: World) -> None:
    fsm_world.inject("nvml_error", error="lost")
    with pytest.raises(DeviceUnhealthy, match="GPU is lost"):
        await fsm_world.probe.probe(fsm_world.gpus.devices)


async def test_bad_fault_names_and_targets_are_named(fsm_world: World) -> None:
    await fsm_world.sglang("e0", gpus=[0])
    with pytest.raises(ConfigError, match="'melt'"):
        fsm_world.inject("melt", engine="e0")
    with pytest.raises(ConfigError, match="'nope'"):
        fsm_world.inject("error", engine="nope", call="resume")
    with pytest.raises(ConfigError, match="call"):
        fsm_world.inject("error", engine="e0")
    with pytest.raises(ConfigError, match="--fail"):
        fsm_world.fail("e0")


async def test_the_users_trainer_callables_run_in_the_world(fsm_world: World) -> None:
    calls: list[str] = []

    async def onload(tags: list[str] | None) -> None:
        calls.append("onload")

    trainer = await fsm_world.trainer(
        "t0", gpus=[0], offload=lambda: calls.append("offload"), onload=onload
    )
    await fsm_world.orchestrator.wake("t0")
    assert trainer.onloaded and fsm_world.used_gib(0) > 30
    await fsm_world.orchestrator.release("t0")
    assert calls == ["onload", "offload"] and fsm_world.used_gib(0) < 3
    with pytest.raises(RuleBroken, match=r"\[gate-skipped\] engine 't0'"):
        await trainer.onload()  # gate skipped: raises first
    log = await fsm_world.finish()
    assert [f.rule for f in log.findings] == ["gate-skipped"]
    with pytest.raises(AssertionError, match="gate-skipped"):
        assert_replays_clean(log)


async def test_an_error_injected_into_the_users_onload_fails_the_wake(fsm_world: World) -> None:
    await fsm_world.trainer("t0", gpus=[0])
    fsm_world.inject("error", engine="t0", call="resume", nth=1)
    with pytest.raises(EngineError, match="t0"):
        await fsm_world.orchestrator.wake("t0")
    assert fsm_world.state("t0") is State.FAILED


async def test_memory_faults_on_the_users_trainer_are_measured(fsm_world: World) -> None:
    await fsm_world.trainer("t0", gpus=[0], awake=True, residual_gib=0.5)
    fsm_world.inject("late_release", engine="t0", delay_s=4.0)
    await fsm_world.orchestrator.release("t0")  # the release gate waits for the drop
    assert fsm_world.clock.now() >= 4.0 and fsm_world.used_gib(0) == pytest.approx(0.5)
    await fsm_world.orchestrator.wake("t0")
    fsm_world.inject("stuck_memory", engine="t0", nth=1)
    with pytest.raises(GateTimeout, match="release gate"):
        await fsm_world.orchestrator.release("t0")
    assert fsm_world.state("t0") is State.FAILED and fsm_world.used_gib(0) > 30


async def test_a_router_hook_that_raises_stops_the_release(fsm_world: World) -> None:
    def close_admission(engine_id: str) -> None:
        raise RuntimeError(f"router down for {engine_id}")

    await fsm_world.sglang("e0", gpus=[0], before_release=close_admission)
    with pytest.raises(EngineError, match="router hook"):
        await fsm_world.orchestrator.release("e0")
    log = await fsm_world.finish()
    assert "router down for e0" in (log.transitions("e0")[-1].reason or "")


async def test_a_vllm_engine_sleeps_and_wakes(fsm_world: World) -> None:
    eng = await fsm_world.vllm("v0", gpus=[2, 3])
    await fsm_world.orchestrator.release("v0")
    await fsm_world.orchestrator.wake("v0")
    assert eng.name == "sim-vllm"
    assert_transitions(
        await fsm_world.finish(), "v0", ["releasing", "slept", "gated", "waking", "active"]
    )


@pytest.mark.fsm_world(gpus=[40, 80], threshold_gib=5)
async def test_the_fixtures_share_one_world_chosen_by_the_marker(
    fsm_world: World,
    fsm_clock: object,
    fsm_gpus: object,
    fsm_orchestrator: object,
    fsm_log: EventLog,
) -> None:
    assert fsm_clock is fsm_world.clock and fsm_gpus is fsm_world.gpus
    assert fsm_orchestrator is fsm_world.orchestrator
    assert [d.total_bytes for d in fsm_world.gpus.devices] == [40 * 1024**3, 80 * 1024**3]
    await fsm_world.sim_trainer("t0", gpus=[1])
    await fsm_world.orchestrator.wake("t0")
    run = fsm_log.run
    assert run is not None and run.threshold_bytes == 5 * 1024**3
    assert fsm_log.states("t0") == ["slept", "gated", "waking", "active"]  # a live view


async def test_trainer_hooks_and_bad_inputs(fsm_world: World) -> None:
    seen: list[str] = []
    await fsm_world.trainer(
        "t0", gpus=[0], prepare=lambda: seen.append("prepare"), finish=lambda: seen.append("finish")
    )
    await fsm_world.orchestrator.wake("t0")
    await fsm_world.orchestrator.release("t0")
    assert seen == ["finish", "prepare"]
    with pytest.raises(ConfigError, match="residual_gib"):
        await fsm_world.trainer("t1", gpus=[1], residual_gib=-1)
    with pytest.raises(ConfigError, match="'t0'"):
        await fsm_world.sglang("t0", gpus=[1])
    with pytest.raises(ConfigError, match="gpu"):
        await fsm_world.sglang("e9", gpus=[9])


# --- the assertions' messages, on hand-written logs --------------------------------------------


def test_a_wake_without_a_gate_names_the_event_engine_and_rule() -> None:
    b = LogBuilder()
    b.engine("t0", [0], "slept", role="trainer")
    b.t("t0", "slept", "gated", "request_wake")
    b.t("t0", "gated", "waking", "gate_open")
    b.t("t0", "waking", "active", "woken")
    b.finish()
    with pytest.raises(AssertionError) as info:
        assert_no_wake_over_threshold(EventLog(b.events))
    text = str(info.value)
    assert "no-wake-over-threshold" in text and "engine 't0'" in text
    assert "seq 4 transition gated -> waking" in text


def test_the_incident_fails_both_the_threshold_and_the_replay() -> None:
    log = EventLog(incident_log(with_gate_decision=True).events)
    with pytest.raises(AssertionError, match=r"engine 'p1-train'.*29\.0 GiB"):
        assert_no_wake_over_threshold(log)
    with pytest.raises(AssertionError, match=r"\[2-wake-gate\] engine 'p1-train' at seq"):
        assert_replays_clean(log)


def test_a_wrong_path_names_the_first_transition_that_differs() -> None:
    b = LogBuilder()
    b.engine("e0", [0], "active")
    b.release("e0")
    b.finish()
    log = EventLog(b.events)
    assert_transitions(log, "e0", ["releasing", "slept"])
    with pytest.raises(AssertionError, match=r"transition 2 \(seq 4 .*went to 'slept', expected"):
        assert_transitions(log, "e0", ["releasing", "failed"])
    with pytest.raises(AssertionError, match="missing"):
        assert_transitions(log, "e0", ["releasing", "slept", "gated"])
    with pytest.raises(ConfigError, match="'nope'"):
        assert_transitions(log, "nope", [])


def test_an_unfinished_log_is_not_called_clean() -> None:
    b = LogBuilder()
    b.engine("e0", [0], "active")
    with pytest.raises(AssertionError, match="run_finished"):
        assert_replays_clean(EventLog(b.events))


def test_a_world_run_is_the_same_on_asyncio_and_trio() -> None:
    """Virtual time makes a world deterministic: the same log, event for event, on both."""

    async def scenario() -> list[bytes]:
        world = World(gpus=2)
        await world.sglang("e0", gpus=[0, 1])
        await world.sim_trainer("t0", gpus=[0])
        world.inject("late_release", engine="e0", delay_s=0.7)
        world.inject("cotenant", gpu=0, gib=9, arrive_s=0.1, leave_s=3.0)
        await world.orchestrator.release("e0")
        await world.orchestrator.wake("t0")
        log = await world.finish()
        assert_replays_clean(log)
        return [codec.encode(e) for e in log.events]

    on_asyncio = anyio.run(scenario, backend="asyncio")
    on_trio = anyio.run(scenario, backend="trio")
    assert len(on_asyncio) > 10
    assert on_asyncio == on_trio
