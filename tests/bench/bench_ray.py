"""RayProbe round cost vs node count, side by side with its baselines, in one run.

A local Ray (2 CPUs) with N probe actors on the one real node standing for N nodes, 2 fake
GPUs each. Per round over every node's GPUs: RayProbe.probe (one concurrent round), the same
Ray calls made one node after the other (what a naive loop would cost), and the fake backend
called in-process (no Ray: the floor). Needs the ``ray`` extra.

Run: ``python -m tests.bench.bench_ray [--rounds N] [--nodes 1,2,4]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import anyio
import ray

from offload_fsm.probe.base import GpuDevice
from offload_fsm.ray_support import FakeNodeBackend, ProbeNode, RayProbe
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus


async def median_ms(fn: Callable[[], Awaitable[object]], rounds: int) -> float:
    for _ in range(min(20, rounds)):
        await fn()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


async def bench(node_counts: Sequence[int], rounds: int, node_id: str) -> None:
    print(
        f"{'nodes':>5} {'gpus':>5} {'RayProbe round':>16} {'node by node':>14} {'in-process':>12}"
    )
    for count in node_counts:
        nodes = [ProbeNode(node_id, f"n{i}") for i in range(count)]
        probe = await RayProbe.start(nodes, factory=FakeNodeBackend(2), timeout_s=10.0)
        try:
            devs = await probe.devices()

            async def one_by_one(
                p: RayProbe = probe, all_devs: tuple[GpuDevice, ...] = devs
            ) -> None:
                for node in p.actors:
                    await p.probe([d for d in all_devs if d.node == node])

            local = FakeBackend(FakeGpus(make_devices(2 * count)))
            local_devs = local.gpus.devices
            concurrent = await median_ms(partial(probe.probe, devs), rounds)
            serial = await median_ms(one_by_one, rounds)
            floor = await median_ms(partial(local.probe, local_devs), rounds)
            print(
                f"{count:>5} {len(devs):>5} {concurrent:>13.2f} ms {serial:>11.2f} ms"
                f" {floor:>9.3f} ms"
            )
        finally:
            await probe.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--nodes", default="1,2,4")
    args = parser.parse_args()
    counts = [int(n) for n in args.nodes.split(",")]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        node_id = str(ray.get_runtime_context().get_node_id())
        anyio.run(bench, counts, args.rounds, node_id)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
