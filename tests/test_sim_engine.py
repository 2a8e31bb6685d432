"""The in-process simulated engine, its footprint and its fault plan (virtual time)."""

from __future__ import annotations

import pytest

from offload_fsm.core.errors import (
    ConfigError,
    DeviceIdError,
    EngineCallTimeout,
    EngineError,
    EngineUnreachable,
)
from offload_fsm.engines.base import EngineAdapter
from offload_fsm.probe.base import GIB
from offload_fsm.sim.engine import SimEngine
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.sim.sim_model import (
    CONTEXT_BYTES,
    Fault,
    FaultKind,
    FaultPlan,
    FaultRule,
    Footprint,
)
from offload_fsm.timing.clock import VirtualClock
from offload_fsm.timing.deadlines import deadline

FP = Footprint.gib(weights=2, kv_cache=4, cuda_graph=0.5)


def machine(
    faults: FaultPlan | None = None, **kw: object
) -> tuple[VirtualClock, FakeGpus, SimEngine]:
    clock = VirtualClock()
    gpus = FakeGpus(make_devices(3), clock)
    engine = SimEngine(
        "sim0",
        gpus,
        [0, 1],
        pid=5000,
        footprint=FP,
        faults=faults,
        **kw,  # type: ignore[arg-type]
    )
    return clock, gpus, engine


async def test_memory_lives_in_the_ledger_under_the_pid_on_its_gpus() -> None:
    _, gpus, engine = machine()
    assert isinstance(engine, EngineAdapter)
    assert engine.process_root == 5000
    assert FP.context == CONTEXT_BYTES == int(0.6 * GIB)
    assert gpus.used(0) == gpus.used(1) == FP.total
    assert gpus.used(2) == 0
    rnd = gpus.snapshot(gpus.devices)
    assert [(p.pid, p.device.index, p.used_bytes) for p in rnd.processes] == [
        (5000, 0, FP.total),
        (5000, 1, FP.total),
    ]


async def test_full_cycle_leaves_the_context_floor_and_takes_time() -> None:
    clock, gpus, engine = machine()
    await engine.prepare_release(5.0)
    t0 = clock.now()
    await engine.release(None)
    assert clock.now() - t0 == pytest.approx(0.02)  # torch_memory_saver pause, measured
    assert gpus.used(0) == gpus.used(1) == FP.context  # the CUDA context stays
    assert engine.released_tags == {"weights", "kv_cache", "cuda_graph"}
    await engine.resume(["weights"])
    assert gpus.used(0) == FP.context + FP.weights
    await engine.resume(["kv_cache", "cuda_graph"])
    await engine.finish_wake()
    assert gpus.used(1) == FP.total
    assert engine.calls == {"prepare_release": 1, "release": 1, "resume": 2, "finish_wake": 1}


async def test_release_before_pause_is_refused_like_a_busy_sglang() -> None:
    _, gpus, engine = machine()
    with pytest.raises(EngineError, match="pause_generation first"):
        await engine.release(None)
    assert gpus.used(0) == FP.total
    _, gpus, relaxed = machine(require_pause=False)
    await relaxed.release(["kv_cache"])
    assert gpus.used(0) == FP.total - FP.kv_cache


async def test_resume_of_a_tag_not_released_raises_and_changes_nothing() -> None:
    _, gpus, engine = machine()
    await engine.prepare_release(1.0)
    await engine.release(["kv_cache"])
    with pytest.raises(EngineError, match="not released"):
        await engine.resume(["weights"])
    with pytest.raises(EngineError, match="not released"):
        await engine.resume(None)  # everything: weights and graphs are not released
    assert engine.released_tags == {"kv_cache"}
    assert gpus.used(0) == FP.total - FP.kv_cache
    await engine.resume(["kv_cache"])
    with pytest.raises(EngineError, match="not released"):
        await engine.resume(["kv_cache"])  # double resume
    with pytest.raises(ConfigError, match="tags"):
        await engine.release(["activations"])


async def test_late_release_returns_before_memory_drops() -> None:
    plan = FaultPlan().on("release", "late_release", delay_s=0.5)
    clock, gpus, engine = machine(plan)
    await engine.prepare_release(1.0)
    await engine.release(None)
    t_return = clock.now()
    assert gpus.used(0) == FP.total  # returned "ok", memory still there
    await clock.sleep(0.49)
    assert gpus.used(0) == FP.total
    await clock.sleep(0.02)
    assert gpus.used(0) == FP.context
    assert clock.now() - t_return == pytest.approx(0.51)


async def test_partial_and_no_release_make_belief_and_memory_disagree() -> None:
    plan = FaultPlan().on("release", FaultKind.PARTIAL_RELEASE, keep_fraction=0.25, nth=1)
    plan.on("release", "no_release", nth=2)
    _, gpus, engine = machine(plan)
    await engine.prepare_release(1.0)
    await engine.release(["kv_cache"])
    assert gpus.used(0) == FP.total - FP.kv_cache + FP.kv_cache // 4
    await engine.release(["weights"])
    assert engine.released_tags == {"kv_cache", "weights"}  # it believes both are gone
    assert gpus.used(0) == FP.total - FP.kv_cache + FP.kv_cache // 4  # weights never left
    await engine.resume(["kv_cache", "weights"])
    assert gpus.used(0) == FP.total


async def test_noop_resume_returns_ok_but_memory_stays_away() -> None:
    _, gpus, engine = machine(FaultPlan().on("resume", "noop_resume"))
    await engine.prepare_release(1.0)
    await engine.release(None)
    await engine.resume(None)
    assert engine.released_tags == frozenset()
    assert gpus.used(0) == FP.context


async def test_error_fault_fails_like_http_500_then_recovers() -> None:
    _, gpus, engine = machine(FaultPlan().on("release", "error", nth=1))
    await engine.prepare_release(1.0)
    with pytest.raises(EngineError, match="HTTP 500") as info:
        await engine.release(None)
    assert type(info.value) is EngineError
    assert gpus.used(0) == FP.total and engine.released_tags == frozenset()
    await engine.release(None)  # call 2 is not faulted
    assert gpus.used(0) == FP.context


async def test_hang_forever_is_cut_by_the_callers_deadline() -> None:
    clock, gpus, engine = machine(FaultPlan().on("release", "hang"))
    await engine.prepare_release(1.0)
    with pytest.raises(TimeoutError):
        async with deadline(clock, 30.0):
            await engine.release(None)
    assert clock.now() == pytest.approx(30.001)
    assert gpus.used(0) == FP.total


async def test_hang_with_delay_times_out_like_an_http_client() -> None:
    clock, _, engine = machine(FaultPlan().on("resume", "hang", delay_s=2.0))
    await engine.prepare_release(1.0)
    await engine.release(None)
    t0 = clock.now()
    with pytest.raises(EngineCallTimeout, match="simulated hang"):
        await engine.resume(None)
    assert clock.now() - t0 == pytest.approx(2.0)


async def test_crash_memory_goes_later_and_engine_stays_unreachable() -> None:
    clock, gpus, engine = machine(FaultPlan().on("resume", "crash", delay_s=0.13))
    await engine.prepare_release(1.0)
    await engine.release(["kv_cache"])
    with pytest.raises(EngineUnreachable, match="died"):
        await engine.resume(["kv_cache"])
    assert engine.crashed
    assert gpus.used(0) == FP.total - FP.kv_cache  # not reaped yet
    await clock.sleep(0.13)
    assert gpus.used(0) == gpus.used(1) == 0  # context gone too
    assert gpus.snapshot(gpus.devices).processes == ()
    with pytest.raises(EngineUnreachable):
        await engine.finish_wake()


async def test_kill_by_hand_and_unreachable_fault() -> None:
    clock, gpus, engine = machine(FaultPlan().on("prepare_release", "unreachable", nth=1))
    with pytest.raises(EngineUnreachable, match="refused"):
        await engine.prepare_release(1.0)
    await engine.prepare_release(1.0)  # call 2 goes through
    engine.kill(after_s=0.1)
    with pytest.raises(EngineUnreachable):
        await engine.release(None)
    await clock.sleep(0.1)
    assert gpus.used(0) == 0


async def test_busy_drain_is_waited_for_within_the_bound() -> None:
    plan = FaultPlan().on("prepare_release", "busy", delay_s=0.3, nth=1)
    plan.on("prepare_release", "busy", delay_s=9.0, nth=2)
    clock, _, engine = machine(plan)
    t0 = clock.now()
    await engine.prepare_release(drain_timeout_s=1.0)
    assert clock.now() - t0 == pytest.approx(0.301)
    t1 = clock.now()
    with pytest.raises(EngineCallTimeout, match="still busy after 1 s"):
        await engine.prepare_release(drain_timeout_s=1.0)
    assert clock.now() - t1 == pytest.approx(1.001)


async def test_plan_changes_apply_to_later_calls_and_closed_engine_refuses() -> None:
    _, _, engine = machine()
    await engine.prepare_release(1.0)
    engine.faults.on("release", "error")
    with pytest.raises(EngineError, match="500"):
        await engine.release(None)
    engine.faults.clear()
    await engine.release(None)
    await engine.aclose()
    with pytest.raises(EngineError, match="closed"):
        await engine.resume(None)


def test_constructor_validates() -> None:
    gpus = FakeGpus(make_devices(2), VirtualClock())
    with pytest.raises(DeviceIdError):
        SimEngine("e", gpus, [5], pid=1, footprint=FP)
    with pytest.raises(ConfigError, match="distinct"):
        SimEngine("e", gpus, [0, 0], pid=1, footprint=FP)
    with pytest.raises(ConfigError, match="pid"):
        SimEngine("e", gpus, [0], pid=0, footprint=FP)
    with pytest.raises(ConfigError, match="latency_s"):
        SimEngine("e", gpus, [0], pid=1, footprint=FP, latency_s={"release": -1})
    with pytest.raises(ConfigError, match="latency_s"):
        SimEngine("e", gpus, [0], pid=1, footprint=FP, latency_s={"sleep": 0.1})


# -- fault plan and footprint ----------------------------------------------------------------


def test_fault_plan_precedence() -> None:
    plan = FaultPlan()
    plan.on("release", "error")
    plan.on("release", "no_release", nth=2)
    plan.on("release", "hang", nth=2)  # last specific rule wins
    assert plan.fault_for("release", 1) == Fault(FaultKind.ERROR)
    assert plan.fault_for("release", 2) == Fault(FaultKind.HANG)
    assert plan.fault_for("release", 3) == Fault(FaultKind.ERROR)
    assert plan.fault_for("resume", 1) is None


def test_fault_plan_json_round_trip() -> None:
    plan = FaultPlan(
        [
            FaultRule("release", Fault(FaultKind.LATE_RELEASE, 0.5), nth=1),
            FaultRule("resume", Fault(FaultKind.NOOP_RESUME)),
            FaultRule("abort", Fault(FaultKind.BUSY, 2.0)),
        ]
    )
    again = FaultPlan.from_json(plan.to_json())
    assert again.rules == plan.rules


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: FaultPlan().on("relase", "error"), "fault call"),
        (lambda: FaultPlan().on("resume", "late_release", delay_s=1), "fault call"),
        (lambda: FaultPlan().on("release", "late_release"), "delay_s"),
        (lambda: FaultPlan().on("release", "explode"), "fault kind"),
        (lambda: FaultPlan().on("release", "partial_release", keep_fraction=1.0), "keep_fraction"),
        (lambda: FaultPlan().on("release", "error", nth=0), "nth"),
        (lambda: FaultPlan().on("release", "hang", delay_s=float("nan")), "delay_s"),
        (lambda: FaultPlan.from_json({"release": "error"}), "faults"),
        (lambda: FaultPlan.from_json([{"call": "release", "kind": "error", "x": 1}]), "fault"),
        (lambda: Footprint(weights=-1, kv_cache=0), "footprint.weights"),
        (lambda: Footprint.from_json({"weights": 1}), "footprint"),
    ],
)
def test_bad_fault_and_footprint_input_names_the_input(make: object, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()  # type: ignore[operator]
    assert info.value.name == name


def test_footprint_json_round_trip() -> None:
    assert Footprint.from_json(FP.to_json()) == FP
    assert FP.total == FP.weights + FP.kv_cache + FP.cuda_graph + FP.context
