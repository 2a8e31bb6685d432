"""Simulated scale run: N nodes x 8 GPUs, 2 pipelines per 8-GPU group, full cycles in
virtual time. Prints wall time per cycle against GPU count (goal: linear; a 512-GPU cycle in
< 1 s of wall time on a 2-core machine).

Two figures per size, from one run of S+K steps (``BENCH_STEPS``=S, ``BENCH_EXTRA``=K,
default 2 and 4). "per step" is its wall time divided by S+K: its first step has no expand
(every engine starts awake), so it flatters the cycle. "full cycle" is the wall time from
the moment the first pipeline starts step S to the moment the first one starts step S+K,
divided by K: K full cycles (expand, rollout, shrink, train) of every pipeline, the pipelines
running in lockstep in virtual time; the figure the goal is about. Measuring it inside one
run (earlier versions subtracted a run of S steps from one of S+K) keeps the VM's changes of
speed between two runs out of it; "events/cycle" and "rounds/cycle" count the same window.

Each node has its own fake GPU ledger (as NVML sees only its node); one routed probe answers
a round for GPUs on several nodes, concurrently; "rounds/cycle" counts the rounds the nodes'
backends ran. Run: ``python -m tests.bench.bench_scale``.

Then, at the largest size, the baseline side by side: the same run with the ledger's probe
rounds shared between gates, as NVML's are. ``BENCH_BASELINES=0`` skips it.

Each run is made ``BENCH_REPEAT`` times (default 3) and the one with the fastest full cycle
kept, as ``timeit`` keeps its fastest: a shared VM's speed moves from minute to minute.
"ref loop" times a fixed pure-Python loop around each row, so a reader can tell a slow
machine from slow code.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import anyio

from offload_fsm.drivers.pipeline import Pipeline, shrink_gpus_for
from offload_fsm.drivers.sim_world import SimOptions, build_sim_world
from offload_fsm.drivers.topology import PipelineTopology
from offload_fsm.drivers.view import RunView
from offload_fsm.events.bus import EventBus, Recorder
from offload_fsm.orchestrator.orchestrator import Orchestrator, OrchestratorConfig
from offload_fsm.probe.base import GIB, GpuDevice, ProbeBackend, ProbeRound, rounds_are_cheap
from offload_fsm.ray_support.rounds import merge_rounds  # no Ray needed
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.timing.clock import VirtualClock
from offload_fsm.timing.concurrency import all_or_first_error
from offload_fsm.timing.idle import BACKEND_OPTIONS


class RoutedProbe:
    """One probe round over GPUs of several nodes: each node's backend, concurrently."""

    name = "routed"

    def __init__(self, backends: Mapping[str | None, ProbeBackend]) -> None:
        self.backends = backends
        # As cheap as its nodes' rounds (in-memory ledgers here; a Ray routed probe is not).
        self.cheap_rounds = all(rounds_are_cheap(b) for b in backends.values())
        self.node_rounds = 0  # rounds asked of the nodes' backends

    async def devices(self) -> tuple[GpuDevice, ...]:
        out: list[GpuDevice] = []
        for backend in self.backends.values():
            out.extend(await backend.devices())
        return tuple(out)

    async def probe(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        node = devices[0].node if devices else None
        if all(dev.node == node for dev in devices):  # the common case: one node's GPUs
            self.node_rounds += 1
            return await self.backends[node].probe(devices)
        by_node: dict[str | None, list[GpuDevice]] = {}
        for dev in devices:
            by_node.setdefault(dev.node, []).append(dev)
        self.node_rounds += len(by_node)
        rounds: dict[str, ProbeRound] = {}

        async def one(node: str | None, devs: list[GpuDevice]) -> None:
            rounds[str(node)] = await self.backends[node].probe(devs)

        async with anyio.create_task_group() as tg:
            for node, devs in by_node.items():
                tg.start_soon(one, node, devs)
        return merge_rounds(devices, rounds, max(r.sampled_at for r in rounds.values()))

    async def aclose(self) -> None:
        return None


LATE = float(os.environ.get("BENCH_LATE_RELEASES", "0.0"))  # share of late releases


@dataclass(frozen=True)
class Variant:
    """How a run is set up: as shipped, or with one of the measures taken back (baselines)."""

    name: str
    share_rounds: bool | None = None  # OrchestratorConfig.share_probe_rounds (None: auto)


SHIPPED = Variant("as shipped")
BASELINES = (
    # Shipped: the fake ledger's rounds are cheap, so not shared (probe.base.rounds_are_cheap).
    Variant("probe rounds shared all the same", share_rounds=True),
)


@dataclass(frozen=True)
class Mark:
    """The moment the first pipeline started a step, and the run's counters then."""

    wall: float  # time.perf_counter()
    events: int  # the last event's seq
    node_rounds: int  # probe rounds the nodes' backends had run


@dataclass
class MarkedPipeline(Pipeline):
    """A pipeline that marks, in ``marks`` (shared by every pipeline of the run), when the
    first of them starts each step."""

    marks: dict[int, Mark] = field(default_factory=dict)
    probe: RoutedProbe | None = None

    async def phase(self, step: int, phase: str) -> None:
        if step > 0 and step not in self.marks:
            last = self.recorder.last
            rounds = self.probe.node_rounds if self.probe is not None else 0
            self.marks[step] = Mark(time.perf_counter(), last.seq if last else 0, rounds)
        await super().phase(step, phase)


@dataclass(frozen=True)
class RunFigures:
    wall_per_step: float
    virtual_per_step: float
    marks: dict[int, Mark]  # step -> when the first pipeline started it
    gc_seconds: list[float]  # collector time per generation during the steps

    def window(self, first: int, last: int) -> tuple[float, int, int]:
        """Wall seconds, events and backend rounds from the start of step ``first`` to the
        start of step ``last``."""
        a, b = self.marks[first], self.marks[last]
        return b.wall - a.wall, b.events - a.events, b.node_rounds - a.node_rounds


class GcTimer:
    """Seconds spent in cyclic garbage collection, per generation, while enabled."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._started


def group_topologies(node: str) -> tuple[PipelineTopology, PipelineTopology]:
    return (
        PipelineTopology(f"{node}p1", (0, 1), (0, 1, 2, 3, 4, 5)),
        PipelineTopology(f"{node}p2", (6, 7), (2, 3, 4, 5, 6, 7)),
    )


async def scale_run(nodes: int, steps: int, variant: Variant = SHIPPED) -> RunFigures:
    clock = VirtualClock()
    bus = EventBus()
    recorder = Recorder(bus, "scale", clock)
    view = RunView()
    sub = bus.subscribe("view", capacity=1 << 20, filter=RunView.wants)  # as the runner
    backends: dict[str | None, ProbeBackend] = {}
    worlds = []
    for i in range(nodes):
        node = f"n{i:02d}"
        topos = group_topologies(node)
        world = await build_sim_world(
            topos,
            clock,
            SimOptions(gpu_count=8, seed=i, cotenant=False, node=node, late_release_share=LATE),
        )
        backends[node] = FakeBackend(world.gpus)
        worlds.append((topos, world))
    probe = RoutedProbe(backends)
    orch = Orchestrator(
        probe=probe,
        recorder=recorder,
        clock=clock,
        config=OrchestratorConfig(
            threshold_bytes=8 * GIB, pid_namespace="host", share_probe_rounds=variant.share_rounds
        ),
    )
    pipelines = []
    marks: dict[int, Mark] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(view.follow, sub)
        for topos, world in worlds:
            for spec in world.specs:
                await orch.register(spec)
            for topo in topos:
                others = [t for t in topos if t is not topo]
                engine_ids, trainer_id = world.pipelines[topo.name]
                pipelines.append(
                    MarkedPipeline(
                        topo.name,
                        topo,
                        engine_ids,
                        trainer_id,
                        shrink_gpus_for(topo, others),
                        orch,
                        view,
                        recorder,
                        clock,
                        rollout_s=2.0,
                        train_s=3.0,
                        marks=marks,
                        probe=probe,
                    )
                )
        t0, v0 = time.perf_counter(), clock.now()
        with GcTimer() as gc_timer:
            await all_or_first_error([partial(p.run, steps) for p in pipelines])  # as the runner
        wall, virtual = time.perf_counter() - t0, clock.now() - v0
        bus.close()
    return RunFigures(wall / steps, virtual / steps, marks, gc_timer.seconds)


@dataclass(frozen=True)
class CycleFigures:
    per_step: float  # wall seconds per step of the run
    full_cycle: float  # wall seconds per full cycle, in the window of the run
    virtual: float
    events: int  # per full cycle
    node_rounds: int  # per full cycle
    gc_seconds: list[float]  # over the run
    steps_run: int


async def cycle(
    nodes: int, steps: int, extra: int, variant: Variant = SHIPPED, repeat: int = 1
) -> CycleFigures:
    """The run of ``steps + extra`` steps made ``repeat`` times; the fastest full cycle."""
    best: CycleFigures | None = None
    for _ in range(repeat):
        run = await scale_run(nodes, steps + extra, variant)
        wall, events, rounds = run.window(steps, steps + extra)
        fig = CycleFigures(
            per_step=run.wall_per_step,
            full_cycle=wall / extra,
            virtual=run.virtual_per_step,
            events=events // extra,
            node_rounds=rounds // extra,
            gc_seconds=run.gc_seconds,
            steps_run=steps + extra,
        )
        if best is None or fig.full_cycle < best.full_cycle:
            best = fig
    assert best is not None
    return best


def max_rss_mib() -> float:
    """This process's peak resident memory so far: with sizes run smallest first, the
    largest run's peak."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def ref_loop_ms() -> float:
    """Milliseconds a fixed pure-Python loop takes now (the fastest of 5): the machine's
    speed at this moment, printed beside the figures."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


async def main() -> None:
    counts = [int(x) for x in os.environ.get("BENCH_NODES", "1,4,16,64").split(",")]
    steps = int(os.environ.get("BENCH_STEPS", "2"))
    extra = int(os.environ.get("BENCH_EXTRA", "4"))
    repeat = int(os.environ.get("BENCH_REPEAT", "3"))
    if repeat < 1:
        raise SystemExit(f"BENCH_REPEAT must be >= 1, got {repeat}")
    print(
        f"simulated scale run: 8 GPUs/node, 2 pipelines per node, virtual time; runs of "
        f"{steps + extra} steps; full cycle = (start of step {steps + extra} - start of step "
        f"{steps}) / {extra}; fastest of {repeat} runs each"
    )
    print(
        f"{'nodes':>6} {'GPUs':>6} {'engines':>8} {'per step':>9} {'full cycle':>11} "
        f"{'per GPU':>9} {'virtual/cycle':>14} {'events/cycle':>13} {'rounds/cycle':>13} "
        f"{'gc gen0/1/2, steps run':>24}"
    )
    base = None
    for n in counts:
        before = ref_loop_ms()
        fig = await cycle(n, steps, extra, repeat=repeat)
        per_gpu = fig.full_cycle / (8 * n)
        base = base or per_gpu
        print(
            f"{_row(n, fig)}   (x{per_gpu / base:.2f} per GPU vs smallest; "
            f"ref loop {before:.1f}/{ref_loop_ms():.1f} ms before/after; "
            f"max RSS so far {max_rss_mib():.1f} MiB)"
        )
        sys.stdout.flush()
    if os.environ.get("BENCH_BASELINES", "1") == "0":
        return
    n = counts[-1]
    print(f"\nbaselines at {8 * n} GPUs, each measure taken back (same columns), in turn:")
    for variant in (SHIPPED, *BASELINES):
        fig = await cycle(n, steps, extra, variant, repeat)
        print(f"{_row(n, fig)}   {variant.name} (ref loop {ref_loop_ms():.1f} ms)")
        sys.stdout.flush()


def _row(n: int, fig: CycleFigures) -> str:
    return (
        f"{n:6d} {8 * n:6d} {14 * n:8d} {fig.per_step:8.3f}s {fig.full_cycle:10.3f}s "
        f"{fig.full_cycle / (8 * n) * 1e3:7.2f}ms {fig.virtual:13.2f}s {fig.events:13d} "
        f"{fig.node_rounds:13d} {'/'.join(f'{s:.2f}' for s in fig.gc_seconds):>18}s"
        f"({fig.steps_run})"
    )


if __name__ == "__main__":
    anyio.run(main, backend_options=BACKEND_OPTIONS)
