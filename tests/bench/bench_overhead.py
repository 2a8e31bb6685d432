"""Orchestration overhead of a release/wake cycle, as a share of the physical cost it adds to.

    python -m tests.bench.bench_overhead [--engines 1,64,512] [--cycles 5] [--repeat 3]

N engines, one per fake GPU, instant (a ledger of their memory: release and resume take no
time), on virtual time: every cycle releases all of them (``release_many``: release call,
release gate) and wakes each (concurrent ``wake``: whole-GPU wake gate, resume, resume
check). What a cycle takes in wall time is then the orchestrator's own work (state machine,
gates, probe rounds of the in-memory ledger, events to a subscriber), nothing physical.

Printed beside it, the physical cost of the same cycle on an H200 (shared/gpu-facts.md,
32 GiB per engine): release 13-21 ms + resume 9-14 ms = 22-35 ms per engine. Two shares:

- *per engine*: overhead per engine-cycle / 22 ms (the fastest physical release + resume):
  the orchestrator's CPU time against the GPU time each engine spends moving its memory
  (goal <= 1 % at 512 engines);
- *whole cycle*: the cycle's overhead / 22 ms: the latency one process steering all N
  engines adds when every one of them moves at once, on GPUs of their own, in parallel.

This file is self-contained on purpose: ``compare_scale.py --overhead OTHER_TREE`` runs it,
unchanged, against another checkout's package (``PYTHONPATH``), so both trees are measured
by the same code. ``--child N CYCLES`` prints one figure (seconds per cycle) for that use.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import anyio

from offload_fsm.core.lifecycle import State
from offload_fsm.events.bus import EventBus, Recorder
from offload_fsm.orchestrator.orchestrator import EngineSpec, Orchestrator, OrchestratorConfig
from offload_fsm.probe.base import GIB
from offload_fsm.settings import GatePolicy
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.timing.clock import RealClock, VirtualClock
from offload_fsm.timing.concurrency import all_or_first_error
from tests.ledger_engine import LedgerEngine

# shared/gpu-facts.md, 32 GiB on an H200: torch_memory_saver pause()/empty_cache 13-21 ms,
# resume() 9-14 ms.
RELEASE_MS = (13.0, 21.0)
RESUME_MS = (9.0, 14.0)
PHYSICAL_MS = (RELEASE_MS[0] + RESUME_MS[0], RELEASE_MS[1] + RESUME_MS[1])


def backend_options() -> dict[str, Any]:
    """This tree's asyncio loop for virtual time, where it has one (offload_fsm.timing.idle)."""
    try:
        from offload_fsm.timing.idle import BACKEND_OPTIONS
    except ImportError:  # an older tree: its idle detection works on any loop
        return {}
    return dict(BACKEND_OPTIONS)


async def cycles(engines: int, count: int, real: bool = True) -> float:
    """Seconds of CPU time per release/wake cycle of ``engines`` instant engines (the fastest
    ``count`` cycles after one warm-up cycle), on real time (``real``) or virtual time."""
    clock: Any = RealClock() if real else VirtualClock()
    gpus = FakeGpus(make_devices(engines), clock)
    bus = EventBus()
    sub = bus.subscribe("sink", capacity=1 << 20)  # as the event log writer: reads every event
    config = OrchestratorConfig(
        threshold_bytes=8 * GIB,
        wake_gate=GatePolicy(deadline_s=30.0),
        release_gate=GatePolicy(deadline_s=30.0),
        resume_gate=GatePolicy(deadline_s=30.0, settle_samples=1),
        call_timeout_s=30.0,
        pid_namespace=gpus.pid_namespace,
    )
    orch = Orchestrator(
        probe=FakeBackend(gpus),
        recorder=Recorder(bus, "overhead", clock),
        config=config,
        clock=clock,
    )
    ids = [f"e{i}" for i in range(engines)]
    times: list[float] = []

    async def drain() -> None:
        async for _ in sub:
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain)
        for i, eid in enumerate(ids):
            dev = gpus.devices[i]
            eng = LedgerEngine(gpus, clock, 1000 + i, [dev], footprint=32 * GIB, tg=tg)
            await orch.register(
                EngineSpec(eid, eng, (dev,), pids=partial(frozenset, {eng.pid}))  # type: ignore[arg-type]
            )
        for n in range(count + 1):
            t0 = time.process_time()
            await orch.release_many(ids)
            await all_or_first_error([partial(orch.wake, eid) for eid in ids])
            if n:  # the first cycle warms caches up
                times.append(time.process_time() - t0)
        assert all(orch.state(eid) is State.ACTIVE for eid in ids)
        bus.close()
    return min(times)


def share_row(engines: int, seconds: float) -> str:
    per_engine_ms = seconds / engines * 1e3
    share, whole = per_engine_ms / PHYSICAL_MS[0] * 100, seconds * 1e3 / PHYSICAL_MS[0] * 100
    return (
        f"{engines:>7}  {seconds * 1e3:9.2f} ms  {per_engine_ms * 1e3:9.1f} µs  "
        f"{share:7.2f} %  {whole:9.1f} %"
    )


HEADER = (
    f"{'engines':>7}  {'per cycle':>12}  {'per engine':>12}  {'share/eng':>9}  {'whole cycle':>11}"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_overhead")
    parser.add_argument("--engines", default="1,64,512")
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; the fastest kept")
    parser.add_argument("--child", nargs=2, type=int, metavar=("ENGINES", "CYCLES"))
    args = parser.parse_args(argv)
    if args.child:
        seconds = anyio.run(cycles, *args.child, backend_options=backend_options())
        print(seconds)
        return 0
    counts = [int(x) for x in args.engines.split(",")]
    if any(n < 1 for n in counts) or args.cycles < 1 or args.repeat < 1:
        parser.error("--engines, --cycles and --repeat must be >= 1")
    print(
        f"release/wake cycle of N instant engines (one per fake GPU, virtual time), fastest of "
        f"{args.cycles} cycles x {args.repeat} runs; physical release + resume per engine "
        f"{PHYSICAL_MS[0]:.0f}-{PHYSICAL_MS[1]:.0f} ms (shared/gpu-facts.md); shares against "
        f"{PHYSICAL_MS[0]:.0f} ms"
    )
    print(HEADER)
    for n in counts:
        best = min(
            anyio.run(cycles, n, args.cycles, backend_options=backend_options())
            for _ in range(args.repeat)
        )
        print(share_row(n, best), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
