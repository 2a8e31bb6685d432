"""Soak: ``python -m tests.soak`` (``python3 tasks.py soak``; not part of the test run).

10,000 simulated release/wake cycles on the dual topology (P1 infer 0,1,2 / P2 infer 1,2,3,
sharing GPUs 1 and 2) in virtual time, with seeded random faults: engine calls that fail
(HTTP 500), hang (client timeout, or forever: our deadline), crash, refuse connections;
releases that are late, partial or never happen; resumes that do nothing; co-tenants on
random GPUs (short ones delay a wake, long ones time it out); probe rounds that fail
transiently or hang. A pipeline whose step fails repairs like an operator: failed engines are
restarted and recovered with measured evidence, and the loop goes on.

Checked at the end (non-zero exit when any fails):

- no deadlock: the whole run stays under a wall-clock limit;
- no task leak: the tasks alive after the run are the ones alive before it;
- memory: the process's RSS grows < 20 MiB between the end of the warm-up and the end;
- never a wake onto used memory: at every ``gated -> waking`` the simulated GPUs' true usage
  is at or under the threshold;
- every cycle is accounted for: the log replays clean (no violation, not truncated), replay
  counts the same completed wakes, events and failures as the orchestrator emitted.

``--cycles N --seed S --backend asyncio|trio|both --out DIR``; a short run is part of the
test suite (tests/reliability/test_soak_short.py).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import psutil

from offload_fsm.core.errors import OffloadFsmError, ProbeError, TransientProbeError
from offload_fsm.core.lifecycle import Evidence, State
from offload_fsm.drivers.sim_world import SimOptions, SimWorld, build_sim_world
from offload_fsm.drivers.topology import PipelineTopology, dual_topology
from offload_fsm.events.bus import EventBus, Recorder
from offload_fsm.events.eventlog import EventLogWriter
from offload_fsm.events.kinds import Event, Transition
from offload_fsm.orchestrator.orchestrator import Orchestrator, OrchestratorConfig
from offload_fsm.probe.attribution import resident_by_gpu
from offload_fsm.probe.base import GIB, GpuDevice, ProbeBackend, ProbeRound
from offload_fsm.probe.retry import RetryingProbe, RetryPolicy
from offload_fsm.replay import replay_path
from offload_fsm.settings import GatePolicy
from offload_fsm.sim.engine import SimEngine
from offload_fsm.sim.sim_model import FaultPlan
from offload_fsm.timing.clock import VirtualClock
from offload_fsm.timing.concurrency import all_or_first_error
from offload_fsm.timing.idle import run as run_virtual

E = TypeVar("E", bound=Event)
RSS_LIMIT = 20 * 1024**2
ENGINE_FAULTS = (  # (call, kind, delay_s)
    ("release", "error", None),
    ("resume", "error", None),
    ("release", "partial_release", None),
    ("release", "no_release", None),
    ("release", "late_release", 1.0),
    ("resume", "noop_resume", None),
    ("release", "hang", 2.0),  # answers "timeout" after 2 s, like an HTTP client
    ("resume", "hang", None),  # never answers: our call deadline ends it
    ("release", "crash", 0.13),
    ("resume", "crash", 0.13),
    ("prepare_release", "unreachable", None),
)


class CountingRecorder(Recorder):
    """Counts what the orchestrator emitted, to compare with what replay reads back."""

    def __init__(
        self, bus: EventBus, clock: VirtualClock, used: Callable[[str], int], threshold: int
    ) -> None:
        super().__init__(bus, "soak", clock)
        self.events = 0
        self.cycles = 0  # completed wakes: waking -> active
        self.failures = 0  # transitions into failed
        self.used = used  # the ledger's truth: bytes used on a GPU now
        self.threshold = threshold
        self.wakes_over: list[str] = []  # wakes onto memory over the threshold (must be none)

    async def emit(self, kind: type[E], **fields: Any) -> E:
        if kind is Transition and fields.get("dst") == "waking":
            for key in fields.get("gpus", ()):
                if self.used(key) > self.threshold:
                    self.wakes_over.append(f"{fields.get('engine_id')} on {key}")
        event = await super().emit(kind, **fields)
        self.events += 1
        if isinstance(event, Transition):
            if event.src == "waking" and event.dst == "active":
                self.cycles += 1
            elif event.dst == "failed":
                self.failures += 1
        return event


class NoisyProbe:
    """A probe whose rounds sometimes fail like NVML (Timeout) or hang past the deadline."""

    name = "fake"

    def __init__(self, inner: ProbeBackend, rng: random.Random, clock: VirtualClock) -> None:
        self.inner = inner
        self.rng = rng
        self.clock = clock
        self.faults: Counter[str] = Counter()

    async def devices(self) -> tuple[GpuDevice, ...]:
        return await self.inner.devices()

    async def probe(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        r = self.rng.random()
        if r < 0.02:
            self.faults["probe transient"] += 1
            raise TransientProbeError("NVML: Timeout (soak)")
        if r < 0.022:
            self.faults["probe hang"] += 1
            await self.clock.sleep(5.0)  # past every probe deadline
        return await self.inner.probe(devices)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class SoakResult:
    backend: str
    target: int
    cycles: int = 0
    steps: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    recoveries: int = 0
    events: int = 0
    emitted_failures: int = 0
    log_bytes: int = 0
    wall_s: float = 0.0
    virtual_s: float = 0.0
    rss_warm: int = 0
    rss_end: int = 0
    tasks_before: int = 0
    tasks_after: int = 0
    replay_ok: bool = False
    replay_truncated: bool = True
    replay_cycles: int = 0
    replay_events: int = 0
    replay_failures: int = 0
    violations: list[str] = field(default_factory=list)
    wakes_over: list[str] = field(default_factory=list)
    deadlock: bool = False

    @property
    def rss_growth(self) -> int:
        return self.rss_end - self.rss_warm

    def problems(self, *, check_memory: bool = True) -> list[str]:
        out = []
        if self.deadlock:
            out.append("deadlock: the run did not finish within its wall-clock limit")
        if self.cycles < self.target:
            out.append(f"only {self.cycles} of {self.target} cycles ran")
        if self.tasks_after != self.tasks_before:
            out.append(f"task leak: {self.tasks_before} tasks before, {self.tasks_after} after")
        if check_memory and self.rss_growth >= RSS_LIMIT:
            out.append(f"memory grew {self.rss_growth / 2**20:.1f} MiB (limit 20 MiB)")
        if not self.replay_ok or self.replay_truncated:
            out.append(f"replay: ok={self.replay_ok} truncated={self.replay_truncated}")
        out += self.violations[:5]
        if self.wakes_over:
            out.append(f"{len(self.wakes_over)} wakes onto used memory: {self.wakes_over[:3]}")
        for what, ours, logged in (
            ("cycles", self.cycles, self.replay_cycles),
            ("events", self.events, self.replay_events),
            ("failures", self.emitted_failures, self.replay_failures),
        ):
            if ours != logged:
                out.append(f"{what}: the orchestrator emitted {ours}, the log replays {logged}")
        return out


def count_tasks() -> int:
    """Tasks alive in this event loop (asyncio or trio)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        import trio

        def walk(task: Any) -> int:
            return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

        root = trio.lowlevel.current_root_task()
        return walk(root) if root is not None else 0


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


class Soak:
    def __init__(
        self,
        world: SimWorld,
        orch: Orchestrator,
        recorder: CountingRecorder,
        topologies: Sequence[PipelineTopology],
        rng: random.Random,
        result: SoakResult,
        *,
        warmup: int,
        on_progress: Callable[[SoakResult], None] | None,
    ) -> None:
        self.world = world
        self.orch = orch
        self.recorder = recorder
        self.topologies = topologies
        self.rng = rng
        self.result = result
        self.warmup = warmup
        self.on_progress = on_progress
        self.clock = orch.clock
        self.next_report = 1000

    @property
    def done(self) -> bool:
        return self.recorder.cycles >= self.result.target

    async def pipeline(self, topo: PipelineTopology) -> None:
        engines, trainer = self.world.pipelines[topo.name]
        mine = (*engines, trainer)
        while not self.done:
            self._inject(mine)
            try:
                await self._step(engines, trainer)
            except OffloadFsmError as exc:
                self.result.errors[type(exc).__name__] += 1
                await self._repair(mine)
            self.result.steps += 1
            self._milestones()

    async def _step(self, engines: Sequence[str], trainer: str) -> None:
        orch = self.orch
        slept = [e for e in engines if orch.state(e) is State.SLEPT]
        if slept:
            await orch.wake_many(slept)  # expand: gated on the whole GPUs, all or nothing
        await self.clock.sleep(0.5)  # rollout
        await orch.release_many([e for e in engines if orch.state(e) is State.ACTIVE])
        await orch.wake(trainer)
        await self.clock.sleep(0.5)  # train
        await orch.release(trainer)

    def _inject(self, mine: Sequence[str]) -> None:
        rng, gpus = self.rng, self.world.gpus
        if rng.random() < 0.12:
            eid = rng.choice(mine)
            call, kind, delay = rng.choice(ENGINE_FAULTS)
            sim = self.world.engines[eid]
            sim.faults = FaultPlan().on(call, kind, nth=sim.calls[call] + 1, delay_s=delay)
            self.result.injected[f"{call}:{kind}"] += 1
        if rng.random() < 0.02:
            gpu = rng.randrange(len(gpus.devices))
            long = rng.random() < 0.15
            stay = 25.0 if long else rng.uniform(0.2, 3.0)  # 25 s outlasts the wake gate
            # It arrives a hair after now: a gate that measured at this very instant and
            # opens in it cannot have seen it (a foreign allocation after the last
            # measurement is a race no measuring gate can close; docs/reliability.md).
            gpus.cotenant(31337 + gpu, gpu, 12 * GIB, arrive_s=1e-6, leave_s=stay)
            self.result.injected["co-tenant (long)" if long else "co-tenant"] += 1

    async def _repair(self, mine: Sequence[str]) -> None:
        """An operator's repair: restart each failed engine, recover it with evidence."""
        for eid in mine:
            state = self.orch.state(eid)
            assert state in (State.ACTIVE, State.SLEPT, State.FAILED), (eid, state)
            if state is not State.FAILED:
                continue
            sim = self.world.engines[eid]
            sim.faults = FaultPlan()
            sim.restart(asleep=True)
            evidence = await self._evidence(eid, sim)
            await self.orch.recover(eid, Evidence(State.SLEPT, evidence))
            self.result.recoveries += 1

    async def _evidence(self, eid: str, sim: SimEngine) -> str:
        limit = self.orch.config.default_release_limit_bytes
        for _ in range(50):
            try:
                rnd = await self.orch.probe.probe(sim.devices)
            except ProbeError:
                await self.clock.sleep(0.1)
                continue
            resident = resident_by_gpu(rnd, {sim.pid})
            values = [v for v in resident.values() if v is not None]
            if values and max(values) <= limit:
                return f"restarted; resident {max(values) / GIB:.2f} GiB <= {limit / GIB:.2f} GiB"
            await self.clock.sleep(0.1)
        raise AssertionError(f"{eid}: no evidence that the restarted engine is asleep")

    def _milestones(self) -> None:
        cycles = self.recorder.cycles
        if not self.result.rss_warm and cycles >= self.warmup:
            self.result.rss_warm = rss()
        if self.on_progress is not None and cycles >= self.next_report:
            self.next_report += 1000
            self.result.cycles = cycles
            self.on_progress(self.result)


async def soak(
    cycles: int,
    *,
    seed: int = 1,
    out: Path,
    warmup: int | None = None,
    wall_limit_s: float = 600.0,
    on_progress: Callable[[SoakResult], None] | None = None,
) -> SoakResult:
    """Run the soak in the current event loop; the log goes to ``out/soak.jsonl``."""
    try:
        asyncio.get_running_loop()
        backend = "asyncio"
    except RuntimeError:
        backend = "trio"
    result = SoakResult(backend, cycles)
    result.tasks_before = count_tasks()
    wall0 = time.perf_counter()
    clock = VirtualClock()
    topologies = dual_topology(4, env={})
    options = SimOptions(seed=seed, late_release_share=0.0, cotenant=False)
    world = await build_sim_world(topologies, clock, options)
    bus = EventBus()
    recorder = CountingRecorder(bus, clock, world.gpus.used, 8 * GIB)
    rng = random.Random(seed)
    noisy = NoisyProbe(world.probe, random.Random(seed + 1), clock)
    probe = RetryingProbe(
        noisy,
        policy=RetryPolicy(
            attempts=3, initial_s=0.002, max_s=0.02, jitter_s=0.001, call_timeout_s=1.0
        ),
        clock=clock,
        rng=random.Random(seed + 2),
        recorder=recorder,
    )
    orch = Orchestrator(
        probe=probe,
        recorder=recorder,
        clock=clock,
        config=OrchestratorConfig(
            threshold_bytes=8 * GIB,
            wake_gate=GatePolicy(deadline_s=20.0),
            release_gate=GatePolicy(deadline_s=5.0),
            resume_gate=GatePolicy(deadline_s=5.0, settle_samples=1),
            call_timeout_s=10.0,
            drain_timeout_s=5.0,
            pid_namespace=world.pid_namespace,
        ),
    )
    runner = Soak(
        world,
        orch,
        recorder,
        topologies,
        rng,
        result,
        warmup=cycles // 10 if warmup is None else warmup,
        on_progress=on_progress,
    )
    path = out / "soak.jsonl"
    with EventLogWriter(path) as writer:
        sub = bus.subscribe("event-log", capacity=65536)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, sub)
            await orch.start_run(command=f"tests.soak --cycles {cycles} --seed {seed}")
            for spec in world.specs:
                await orch.register(spec)
            with anyio.move_on_after(wall_limit_s) as limit:  # real seconds
                await all_or_first_error([partial(runner.pipeline, t) for t in topologies])
            result.deadlock = limit.cancelled_caught
            await orch.finish_run("cancelled" if result.deadlock else "ok")
            bus.close()
    await probe.aclose()
    result.wall_s = time.perf_counter() - wall0
    result.virtual_s = clock.now()
    result.cycles = recorder.cycles
    result.events = recorder.events
    result.emitted_failures = recorder.failures
    result.wakes_over = recorder.wakes_over
    result.injected.update(noisy.faults)
    result.rss_end = rss()
    result.rss_warm = result.rss_warm or result.rss_end
    result.log_bytes = path.stat().st_size
    replay = replay_path(path)
    result.replay_ok = replay.ok
    result.replay_truncated = replay.truncated
    result.replay_events = replay.events
    result.replay_cycles = sum(t.cycles for t in replay.engines.values())
    result.replay_failures = sum(t.failures for t in replay.engines.values())
    result.violations = [str(v) for v in replay.violations]
    for _ in range(100):  # let anything that is ending end, then count what is left
        await anyio.lowlevel.checkpoint()
    result.tasks_after = count_tasks()
    return result


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, {sys.platform}"


def report(r: SoakResult) -> str:
    per_s = r.cycles / r.wall_s if r.wall_s else 0.0
    lines = [
        f"backend {r.backend}: {r.cycles} cycles in {r.steps} pipeline steps, "
        f"{r.wall_s:.1f} s wall ({per_s:.0f} cycles/s), {r.virtual_s:.0f} s virtual",
        f"  events {r.events} ({r.log_bytes / 2**20:.1f} MiB log); replay: ok={r.replay_ok}, "
        f"truncated={r.replay_truncated}, cycles {r.replay_cycles}, events {r.replay_events}, "
        f"failures {r.replay_failures} (emitted {r.emitted_failures})",
        f"  faults injected: {sum(r.injected.values())} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(r.injected.items()))
        + ")",
        f"  step errors: {sum(r.errors.values())} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items()))
        + f"); engines restarted and recovered: {r.recoveries}",
        f"  RSS {r.rss_warm / 2**20:.1f} MiB after warm-up -> {r.rss_end / 2**20:.1f} MiB at "
        f"the end (growth {r.rss_growth / 2**20:+.1f} MiB, limit 20)",
        f"  wakes onto memory over the threshold (the ledger's truth at each gate_open): "
        f"{len(r.wakes_over)}",
        f"  tasks {r.tasks_before} before, {r.tasks_after} after; deadlock: {r.deadlock}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    p.add_argument("--out", type=Path, default=None, help="where the logs go (a temp dir)")
    p.add_argument("--wall-limit", type=float, default=540.0, help="seconds per backend")
    args = p.parse_args(argv)
    print(f"soak: {args.cycles} cycles, seed {args.seed}, on {machine()}", flush=True)
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    failed = False
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        for backend in backends:
            out = (args.out or Path(tmp)) / backend
            out.mkdir(parents=True, exist_ok=True)

            def progress(r: SoakResult, backend: str = backend) -> None:
                print(f"  [{backend}] {r.cycles} cycles, {r.steps} steps", flush=True)

            result = run_virtual(
                partial(
                    soak,
                    args.cycles,
                    seed=args.seed,
                    out=out,
                    wall_limit_s=args.wall_limit,
                    on_progress=progress,
                ),
                backend=backend,
            )
            print(report(result), flush=True)
            problems = result.problems()
            for problem in problems:
                print(f"  FAILED: {problem}", flush=True)
            failed |= bool(problems)
    print("soak: FAILED" if failed else "soak: ok", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
