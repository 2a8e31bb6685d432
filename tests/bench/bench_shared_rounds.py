"""Gates polling at the same moment: one shared probe round (``SharedRounds``) vs a round each.

K gates, each on its own GPU of one 8-GPU node, poll together, moment after moment (as a
release of K engines does: its gates settle in lockstep). Per moment: wall time until every
gate has its answer, process CPU time, and backend rounds. Side by side:

- NVML backend (its worker-thread hop per round, as in production) over the scripted fake
  NVML module of the tests, and over the real NVML where ``nvmlInit`` works;
- the in-memory fake backend (the simulator's): its round costs less than batching it, so
  sharing costs time there; ``bench_scale`` prints the same trade for the whole simulation.

Run: ``python -m tests.bench.bench_shared_rounds [--moments N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

import anyio

from offload_fsm.probe.base import GpuDevice, ProbeBackend
from offload_fsm.probe.nvml import NvmlBackend
from offload_fsm.probe.shared import SharedRounds
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.timing.idle import run as run_virtual
from tests.bench.bench_probe import nvml_available
from tests.probe.fake_nvml import GIB, FakeNvml, h200s

GATES = (1, 4, 8)
# A fresh backend and the 8 devices its gates poll.
MakeBackend = Callable[[], Awaitable[tuple[ProbeBackend, tuple[GpuDevice, ...]]]]


async def one_moment(probe: ProbeBackend, devices: Sequence[GpuDevice], gates: int) -> None:
    async with anyio.create_task_group() as tg:
        for i in range(gates):
            tg.start_soon(probe.probe, (devices[i],))


async def measure(
    probe: ProbeBackend, devices: Sequence[GpuDevice], gates: int, moments: int
) -> tuple[float, float]:
    """(median wall us per moment, CPU us per moment)."""
    for _ in range(20):  # warm-up: worker thread, handles
        await one_moment(probe, devices, gates)
    walls = []
    cpu0 = time.process_time()
    for _ in range(moments):
        t0 = time.perf_counter()
        await one_moment(probe, devices, gates)
        walls.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    return statistics.median(walls) * 1e6, cpu / moments * 1e6


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--moments", type=int, default=300)
    args = parser.parse_args(argv)
    print(
        f"K gates on one node poll at the same moment, {args.moments} moments; per moment: "
        "median wall until every gate has its round, process CPU, backend rounds"
    )
    print(f"{'backend':<34} {'gates':>5} {'a round each':>26} {'one shared round':>26}")

    async def row(label: str, make: MakeBackend, gates: int) -> None:
        cells = []
        for shared in (False, True):
            backend, devices = await make()
            probe: ProbeBackend = SharedRounds(backend) if shared else backend
            before = _rounds(backend)
            wall, cpu = await measure(probe, devices, gates, args.moments)
            rounds = (_rounds(backend) - before) / (args.moments + 20)
            cells.append(f"{wall:7.0f}/{cpu:6.0f} us {rounds:4.1f} rd")
            await backend.aclose()
        print(f"{label:<34} {gates:5d} {cells[0]:>26} {cells[1]:>26}")
        sys.stdout.flush()

    async def fake_nvml() -> tuple[ProbeBackend, tuple[GpuDevice, ...]]:
        gpus = h200s(8)
        for i, gpu in enumerate(gpus):
            gpu.processes = {1000 + i: 30 * GIB}
        backend = NvmlBackend(FakeNvml(gpus))
        return backend, await backend.devices()

    async def in_memory() -> tuple[ProbeBackend, tuple[GpuDevice, ...]]:
        ledger = FakeGpus(make_devices(8))
        for i in range(8):
            ledger.set_usage(1000 + i, i, 30 * GIB)
        return FakeBackend(ledger), ledger.devices

    why_no_nvml = nvml_available()

    async def nvml() -> tuple[ProbeBackend, tuple[GpuDevice, ...]]:
        backend = NvmlBackend()  # the real pynvml
        devices = await backend.devices()
        # With fewer than 8 GPUs, gates repeat devices (a shared round asks each GPU once).
        return backend, tuple(devices[i % len(devices)] for i in range(8))

    for gates in GATES:
        await row("NVML backend over the fake module", fake_nvml, gates)
    if why_no_nvml is not None:
        print(f"{'NVML backend, real NVML':<34} (skipped: nvmlInit failed: {why_no_nvml})")
    else:
        for gates in GATES:
            await row("NVML backend, real NVML", nvml, gates)
    for gates in GATES:
        await row("in-memory fake (the simulator)", in_memory, gates)
    return 0


def _rounds(backend: ProbeBackend) -> int:
    if isinstance(backend, NvmlBackend):
        return backend.hops
    assert isinstance(backend, FakeBackend)
    return backend.rounds


if __name__ == "__main__":
    sys.exit(run_virtual(main, sys.argv[1:]))
