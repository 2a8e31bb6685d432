"""Probe round cost, side by side with its baselines, in one run.

CPU (always): the fake backend's round through the public async API (bare and through the
retry wrapper) vs the same snapshot called synchronously; the attribution walk (one /proc
snapshot + tree + attribute) for 500 processes in a fake proc root, and on the real /proc vs
psutil's recursive ``children()``.

GPU (only where ``nvmlInit`` works): one round for 1, 4 and 8 devices through the public
async API vs the raw NVML calls it makes (same devices, same process, no thread hop) vs one
``nvidia-smi`` query. With fewer GPUs than asked, devices repeat (said in the output).

Run: ``python -m tests.bench.bench_probe [--json PATH] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import psutil

from offload_fsm.probe.attribution import attribute
from offload_fsm.probe.base import GIB, GpuDevice
from offload_fsm.probe.processes import ProcessTable, detect_pid_namespace
from offload_fsm.probe.retry import RetryingProbe
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from tests.probe.procfs import engine_tree_procs, make_proc

DEVICE_COUNTS = (1, 4, 8)


def stats(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": statistics.median(ordered) * 1e6,
        "p90_us": ordered[int(0.9 * (len(ordered) - 1))] * 1e6,
        "n": len(ordered),
    }


def time_sync(fn: Callable[[], object], rounds: int) -> dict[str, float]:
    for _ in range(min(50, rounds)):
        fn()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return stats(samples)


async def time_async(fn: Callable[[], Awaitable[object]], rounds: int) -> dict[str, float]:
    for _ in range(min(50, rounds)):
        await fn()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t0)
    return stats(samples)


def row(label: str, *cells: str) -> str:
    return f"  {label:<44}" + "".join(f"{c:>14}" for c in cells)


def us(s: dict[str, float]) -> str:
    return f"{s['p50_us']:.1f} us"


# --- CPU -------------------------------------------------------------------------------------


async def bench_fake_rounds(rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for count in DEVICE_COUNTS:
        gpus = FakeGpus(make_devices(count))
        for i, dev in enumerate(gpus.devices):
            for k in range(3):  # three processes per GPU
                gpus.set_usage(1000 + 10 * i + k, dev, (k + 1) * GIB)
        backend = FakeBackend(gpus)
        retrying = RetryingProbe(backend)
        devs = gpus.devices
        out[str(count)] = {
            "snapshot_sync": time_sync(lambda g=gpus, d=devs: g.snapshot(d), rounds),
            "probe_async": await time_async(lambda b=backend, d=devs: b.probe(d), rounds),
            "probe_retrying": await time_async(lambda r=retrying, d=devs: r.probe(d), rounds),
        }
    return out


def bench_attribution(rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_proc(Path(tmp) / "proc", engine_tree_procs(500))
        gpus = FakeGpus(make_devices(8))
        for i, dev in enumerate(gpus.devices):
            gpus.set_usage(200 + 3 * i, dev, 20 * GIB)  # a scheduler per GPU
            gpus.set_usage(201 + 3 * i, dev, 2 * GIB)  # a co-tenant per GPU
        rnd = gpus.snapshot(gpus.devices)

        def walk() -> object:
            table = ProcessTable.snapshot(root)
            return attribute(rnd, {"engine": table.tree(100)}, pid_namespace="host", table=table)

        table = ProcessTable.snapshot(root)
        out["fake_proc_500"] = {
            "processes": len(table),
            "snapshot": time_sync(lambda: ProcessTable.snapshot(root), rounds),
            "snapshot_tree_attribute": time_sync(walk, rounds),
            "detect_pid_namespace": time_sync(lambda: detect_pid_namespace(root), rounds),
        }
    real = ProcessTable.snapshot()
    me = os.getpid()
    out["real_proc"] = {
        "processes": len(real),
        "snapshot_tree": time_sync(lambda: ProcessTable.snapshot().tree(1), rounds),
        "psutil_children_recursive": time_sync(
            lambda: psutil.Process(1).children(recursive=True), max(20, rounds // 10)
        ),
        "psutil_children_of_self": time_sync(
            lambda: psutil.Process(me).children(recursive=True), max(20, rounds // 10)
        ),
    }
    return out


def print_cpu(results: dict[str, Any]) -> None:
    print("CPU: fake backend round (3 processes per GPU), p50")
    print(row("devices", "sync snapshot", "async probe", "retrying"))
    for count, r in results["fake"].items():
        print(row(count, us(r["snapshot_sync"]), us(r["probe_async"]), us(r["probe_retrying"])))
    fake = results["attribution"]["fake_proc_500"]
    real = results["attribution"]["real_proc"]
    print(f"CPU: attribution walk, fake proc root with {fake['processes']} processes, p50")
    print(row("ProcessTable.snapshot", us(fake["snapshot"])))
    print(row("snapshot + tree + attribute (8 GPUs)", us(fake["snapshot_tree_attribute"])))
    print(row("detect_pid_namespace", us(fake["detect_pid_namespace"])))
    print(f"CPU: real /proc ({real['processes']} processes), p50")
    print(row("ProcessTable.snapshot + tree(1)", us(real["snapshot_tree"])))
    print(row("psutil Process(1).children(recursive)", us(real["psutil_children_recursive"])))
    print(row("psutil Process(self).children(recursive)", us(real["psutil_children_of_self"])))


# --- GPU -------------------------------------------------------------------------------------


def nvml_available() -> str | None:
    """None when NVML initialises here, else why not."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return str(exc)
    pynvml.nvmlShutdown()
    return None


def raw_round(pynvml: Any, handles: Sequence[Any]) -> None:
    """The NVML calls of one round, nothing else: the floor the backend is measured against."""
    for h in handles:
        pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
        pynvml.nvmlDeviceGetComputeRunningProcesses_v3(h)


async def bench_gpu(rounds: int) -> dict[str, Any]:
    import pynvml

    from offload_fsm.probe.nvml import NvmlBackend
    from offload_fsm.probe.smi import SmiBackend

    backend = NvmlBackend()
    physical = await backend.devices()
    out: dict[str, Any] = {"physical_gpus": len(physical), "name": physical[0].name, "rounds": {}}
    pynvml.nvmlInit()  # the raw baseline's own init (refcounted by NVML)
    try:
        for count in DEVICE_COUNTS:
            devs: list[GpuDevice] = [physical[i % len(physical)] for i in range(count)]
            handles = [pynvml.nvmlDeviceGetHandleByUUID(d.uuid) for d in devs]
            out["rounds"][str(count)] = {
                "distinct": len({d.key for d in devs}),
                "public_async": await time_async(lambda d=devs: backend.probe(d), rounds),
                "read_round_in_thread": time_sync(lambda d=devs: backend.read_round(d), rounds),
                "raw_nvml": time_sync(lambda h=handles: raw_round(pynvml, h), rounds),
            }
        out["thread_hop"] = await time_async(lambda: anyio.to_thread.run_sync(lambda: None), rounds)
    finally:
        pynvml.nvmlShutdown()
        await backend.aclose()
    smi_path = shutil.which("nvidia-smi")
    if smi_path is not None:
        argv = [smi_path, "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        out["smi_query"] = time_sync(
            lambda: subprocess.run(argv, capture_output=True, check=True), 20
        )
        smi = SmiBackend()
        smi_devs = await smi.devices()
        out["smi_round"] = await time_async(lambda: smi.probe(smi_devs), 20)
    return out


def print_gpu(r: dict[str, Any]) -> None:
    print(f"GPU: {r['physical_gpus']} x {r['name']}, p50 (devices repeat when fewer exist)")
    print(row("devices", "async round", "in-thread", "raw NVML", "round-raw"))
    for count, x in r["rounds"].items():
        gap = x["public_async"]["p50_us"] - x["raw_nvml"]["p50_us"]
        print(
            row(
                f"{count} ({x['distinct']} distinct)",
                us(x["public_async"]),
                us(x["read_round_in_thread"]),
                us(x["raw_nvml"]),
                f"{gap:.1f} us",
            )
        )
    print(row("anyio.to_thread.run_sync(noop)", us(r["thread_hop"])))
    if "smi_query" in r:
        eight = r["rounds"]["8"]["public_async"]["p50_us"]
        print(row("one nvidia-smi --query-gpu", us(r["smi_query"])))
        print(row("smi backend round (two queries at once)", us(r["smi_round"])))
        print(
            row(
                "nvidia-smi query / NVML 8-device round", f"{r['smi_query']['p50_us'] / eight:.0f}x"
            )
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_probe")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "2000")))
    args, _ = parser.parse_known_args(argv)
    results: dict[str, Any] = {}
    results["fake"] = anyio.run(bench_fake_rounds, args.rounds)
    results["attribution"] = bench_attribution(max(50, args.rounds // 10))
    print_cpu(results)
    why = nvml_available()
    if why is None:
        results["gpu"] = anyio.run(bench_gpu, args.rounds)
        print_gpu(results["gpu"])
    else:
        results["gpu"] = {"skipped": why}
        print(f"GPU: skipped (NVML did not initialise: {why})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
