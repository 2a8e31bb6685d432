"""Simulated scale run: N nodes x 8 GPUs, 2 pipelines per 8-GPU group, full cycles in
virtual time. Prints wall time per cycle against GPU count (goal: linear; a 512-GPU cycle in
< 1 s of wall time on a 2-core machine).

Two figures per size. "per step" is a run of S steps divided by S: its first step has no
expand (every engine starts awake) and the end releases what is left, so it flatters the
cycle. "full cycle" is what one more full cycle costs (expand, rollout, shrink, train):
(wall of S+K steps - wall of S steps) / K (``BENCH_STEPS``=S, ``BENCH_EXTRA``=K, default 2
and 4), the figure the goal is about.

Each node has its own fake GPU ledger (as NVML sees only its node); one routed probe answers
a round for GPUs on several nodes, concurrently. Run: ``python -m tests.bench.bench_scale``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from collections.abc import Mapping, Sequence
from functools import partial

import anyio

from offload_fsm.bus import EventBus, Recorder
from offload_fsm.clock import VirtualClock
from offload_fsm.concurrency import all_or_first_error
from offload_fsm.drivers.gc_freeze import frozen_setup
from offload_fsm.drivers.pipeline import Pipeline, shrink_gpus_for
from offload_fsm.drivers.sim_world import SimOptions, build_sim_world
from offload_fsm.drivers.view import RunView
from offload_fsm.orchestrator import Orchestrator, OrchestratorConfig
from offload_fsm.probe.base import GIB, GpuDevice, ProbeBackend, ProbeRound
from offload_fsm.probe.fake import FakeBackend
from offload_fsm.ray_support.rounds import merge_rounds  # no Ray needed
from offload_fsm.topology import PipelineTopology


class RoutedProbe:
    """One probe round over GPUs of several nodes: each node's backend, concurrently."""

    name = "routed"

    def __init__(self, backends: Mapping[str | None, ProbeBackend]) -> None:
        self.backends = backends

    async def devices(self) -> tuple[GpuDevice, ...]:
        out: list[GpuDevice] = []
        for backend in self.backends.values():
            out.extend(await backend.devices())
        return tuple(out)

    async def probe(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        by_node: dict[str | None, list[GpuDevice]] = {}
        for dev in devices:
            by_node.setdefault(dev.node, []).append(dev)
        if len(by_node) == 1:  # the common case: an engine lives on one node
            ((node, devs),) = by_node.items()
            return await self.backends[node].probe(devs)
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
FREEZE = os.environ.get("BENCH_FREEZE", "1") != "0"  # 0: the set-up stays in the collector


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


async def scale_run(nodes: int, steps: int) -> tuple[float, float, int, list[float]]:
    """Returns (wall seconds per cycle, virtual seconds per cycle, events, seconds of
    garbage collection per generation during the steps)."""
    clock = VirtualClock()
    bus = EventBus()
    recorder = Recorder(bus, "scale", clock)
    view = RunView()
    sub = bus.subscribe("view", capacity=1 << 20)
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
    orch = Orchestrator(
        probe=RoutedProbe(backends),
        recorder=recorder,
        clock=clock,
        config=OrchestratorConfig(threshold_bytes=8 * GIB, pid_namespace="host"),
    )
    pipelines = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(view.follow, sub)
        for topos, world in worlds:
            for spec in world.specs:
                await orch.register(spec)
            for topo in topos:
                others = [t for t in topos if t is not topo]
                engine_ids, trainer_id = world.pipelines[topo.name]
                pipelines.append(
                    Pipeline(
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
                    )
                )
        t0, v0 = time.perf_counter(), clock.now()
        with GcTimer() as gc_timer, frozen_setup() if FREEZE else contextlib.nullcontext():
            await all_or_first_error([partial(p.run, steps) for p in pipelines])  # as the runner
        wall, virtual = time.perf_counter() - t0, clock.now() - v0
        bus.close()
    events = recorder.last.seq if recorder.last else 0
    return wall / steps, virtual / steps, events, gc_timer.seconds


async def main() -> None:
    counts = [int(x) for x in os.environ.get("BENCH_NODES", "1,4,16,64").split(",")]
    steps = int(os.environ.get("BENCH_STEPS", "2"))
    extra = int(os.environ.get("BENCH_EXTRA", "4"))
    print(
        f"simulated scale run: 8 GPUs/node, 2 pipelines per node, virtual time; per step over "
        f"{steps} steps, full cycle = ({steps + extra} steps - {steps} steps) / {extra}; "
        f"set-up {'frozen out of' if FREEZE else 'left in'} the collector (BENCH_FREEZE)"
    )
    print(
        f"{'nodes':>6} {'GPUs':>6} {'engines':>8} {'per step':>9} {'full cycle':>11} "
        f"{'per GPU':>9} {'virtual/cycle':>14} {'events/cycle':>13} {'gc gen0/1/2, steps run':>24}"
    )
    base = None
    for n in counts:
        wall, _, events, _ = await scale_run(n, steps)
        wall_more, virtual_more, events_more, gc_s = await scale_run(n, steps + extra)
        full = (wall_more * (steps + extra) - wall * steps) / extra
        virtual = virtual_more  # per step of the longer run
        per_gpu = full / (8 * n)
        base = base or per_gpu
        print(
            f"{n:6d} {8 * n:6d} {14 * n:8d} {wall:8.3f}s {full:10.3f}s "
            f"{per_gpu * 1e3:7.2f}ms {virtual:13.2f}s {(events_more - events) // extra:13d}"
            f" {'/'.join(f'{s:.2f}' for s in gc_s):>18}s({steps + extra})"
            f"   (x{per_gpu / base:.2f} per GPU vs smallest)"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    anyio.run(main)
