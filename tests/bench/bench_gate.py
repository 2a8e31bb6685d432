"""Gate reaction time and polling cost, side by side with a fixed 0.5 s poll (the old way).

Reaction = from the fake GPU's memory dropping under the threshold to the gate opening.
Run: ``python -m tests.bench.bench_gate``.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from typing import Any

import anyio

from offload_fsm.core.lifecycle import State
from offload_fsm.events.bus import E, EventBus, Recorder
from offload_fsm.events.kinds import Transition
from offload_fsm.gates.conditions import WakeCondition
from offload_fsm.gates.gate import run_gate
from offload_fsm.orchestrator.orchestrator import EngineSpec, Orchestrator, OrchestratorConfig
from offload_fsm.probe.base import GIB
from offload_fsm.settings import GatePolicy
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.timing.clock import Clock, RealClock, VirtualClock
from offload_fsm.timing.idle import run as run_virtual
from tests.ledger_engine import LedgerEngine

THRESHOLD = 8 * GIB
TRIALS = int(os.environ.get("BENCH_TRIALS", "20"))


async def fixed_poll(gpus: FakeGpus, backend: FakeBackend, clock: Clock, period: float) -> None:
    """The seed's loop: sleep a fixed period, check once, go on the first good sample."""
    dev = gpus.devices[0]
    while True:
        rnd = await backend.probe([dev])
        used = rnd.memory[0].used_bytes
        if used is not None and used <= THRESHOLD:
            return
        await clock.sleep(period)


async def one_trial(kind: str, clock: Clock, rng: random.Random) -> float:
    gpus = FakeGpus(make_devices(1), clock)
    backend = FakeBackend(gpus)
    gpus.set_usage(100, 0, 40 * GIB)
    delay = rng.uniform(0.05, 0.6)
    dropped_at: list[float] = []

    async def drop() -> None:
        await clock.sleep(delay)
        gpus.set_usage(100, 0, int(0.6 * GIB))
        dropped_at.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(drop)
        if kind == "offload_fsm gate":
            await run_gate(
                WakeCondition(gpus.devices, THRESHOLD),
                devices=gpus.devices,
                probe=backend,
                policy=GatePolicy(deadline_s=10.0),
                clock=clock,
                recorder=Recorder(EventBus(), "bench", clock),
            )
        else:
            await fixed_poll(gpus, backend, clock, 0.5)
        opened_at = clock.now()
    return opened_at - dropped_at[0]


class TimedEngine(LedgerEngine):
    """Records when its memory fell under the threshold (the moment a gate could open)."""

    dropped_at: float | None = None

    def hold(self, nbytes: int) -> None:
        super().hold(nbytes)
        if nbytes <= THRESHOLD and self.dropped_at is None and hasattr(self, "calls"):
            self.dropped_at = self.clock.now()


class GateOpenRecorder(Recorder):
    """Notes the moment any engine's gate_open transition is emitted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened: list[float] = []

    async def emit(self, kind: type[E], **fields: Any) -> E:
        if kind is Transition and fields.get("trigger") == "gate_open":
            self.opened.append(self.clock.now())
        return await super().emit(kind, **fields)


async def announced_trial(clock: Clock, rng: random.Random) -> float:
    """B waits gated on GPU 0 while A (active there) is released through the orchestrator.

    Reaction = A's memory dropping -> B's gate_open transition (A's release gate settles and
    B's wake gate settles in between: the latency a pipeline really sees)."""
    gpus = FakeGpus(make_devices(1), clock)
    rec = GateOpenRecorder(EventBus(), "bench", clock)
    orch = Orchestrator(
        probe=FakeBackend(gpus),
        recorder=rec,
        config=OrchestratorConfig(threshold_bytes=THRESHOLD, pid_namespace="host"),
        clock=clock,
    )
    a = TimedEngine(gpus, clock, 100, gpus.devices)
    b = LedgerEngine(gpus, clock, 200, gpus.devices)
    b.hold(0)
    await orch.register(EngineSpec("a", a, gpus.devices, pids=lambda: frozenset({100})))
    await orch.register(
        EngineSpec("b", b, gpus.devices, initial=State.SLEPT, pids=lambda: frozenset({200}))
    )
    opened = rec.opened
    async with anyio.create_task_group() as tg:
        tg.start_soon(orch.wake, "b")
        await clock.sleep(rng.uniform(0.05, 0.6))
        await orch.release("a")
    assert a.dropped_at is not None and opened
    return opened[0] - a.dropped_at


async def reaction(kind: str, virtual: bool) -> list[float]:
    rng = random.Random(7)
    out = []
    for _ in range(TRIALS):
        clock: Clock = VirtualClock() if virtual else RealClock()
        if kind == "orchestrated":
            out.append(await announced_trial(clock, rng))
        else:
            out.append(await one_trial(kind, clock, rng))
    return out


async def polling_cpu(seconds: float = 3.0, cap_s: float | None = None) -> float:
    """CPU share of one core while a gate waits on memory that never moves (``cap_s``: the
    poll cap; None: the default policy's)."""
    clock = RealClock()
    gpus = FakeGpus(make_devices(1), clock)
    gpus.set_usage(100, 0, 40 * GIB)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with anyio.move_on_after(seconds):
        await run_gate(
            WakeCondition(gpus.devices, THRESHOLD),
            devices=gpus.devices,
            probe=FakeBackend(gpus),
            policy=GatePolicy(deadline_s=seconds * 10)
            if cap_s is None
            else GatePolicy(deadline_s=seconds * 10, poll_max_s=cap_s),
            clock=clock,
            recorder=Recorder(EventBus(), "bench", clock),
        )
    return (time.process_time() - cpu0) / (time.perf_counter() - wall0)


async def cycle_overhead(cycles: int = 200) -> list[float]:
    """One full release + wake of an in-process engine, real clock, all gates on."""
    clock = RealClock()
    gpus = FakeGpus(make_devices(1), clock)
    rec = Recorder(EventBus(), "bench", clock)
    orch = Orchestrator(
        probe=FakeBackend(gpus),
        recorder=rec,
        config=OrchestratorConfig(threshold_bytes=THRESHOLD, pid_namespace="host"),
        clock=clock,
    )
    eng = LedgerEngine(gpus, clock, 100, gpus.devices)
    await orch.register(EngineSpec("e0", eng, gpus.devices, pids=lambda: frozenset({100})))
    out = []
    for _ in range(cycles):
        t0 = time.perf_counter()
        await orch.release("e0")
        await orch.wake("e0")
        out.append(time.perf_counter() - t0)
    assert orch.state("e0") is State.ACTIVE
    return out


def fmt(xs: list[float]) -> str:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(0.95 * len(xs)))]
    return f"p50 {statistics.median(xs) * 1e3:8.2f} ms   p95 {p95 * 1e3:8.2f} ms"


async def main() -> None:
    print(f"gate reaction: memory drops under threshold -> gate open ({TRIALS} trials each)")
    print("  orchestrated = the holder is released through the orchestrator (gates nudged);")
    print("  unannounced  = a co-tenant frees memory with no event (gate at its backoff cap)")
    for virtual in (True, False):
        label = "virtual time" if virtual else "real time   "
        for kind, name in (
            ("orchestrated", "orchestrated"),
            ("offload_fsm gate", "unannounced"),
            ("fixed 0.5 s poll", "fixed 0.5 s poll"),
        ):
            xs = await reaction(kind, virtual)
            print(f"  {label}  {name:17s} {fmt(xs)}")
    await polling_cpu(0.2)  # warm-up: first-use imports must not count as polling
    cpu = await polling_cpu()
    print(f"polling CPU while waiting (memory not moving): {cpu * 100:.2f} % of one core")
    for cap in (0.02, 0.05, 0.1):  # the trade the default cap makes
        share = await polling_cpu(cap_s=cap)
        print(f"  with a {cap * 1e3:.0f} ms poll cap: {share * 100:.2f} % of one core")
    xs = await cycle_overhead()
    print(f"release+wake cycle, in-process engine, all three gates: {fmt(xs)}")


if __name__ == "__main__":
    run_virtual(main)
