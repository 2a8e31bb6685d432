"""``offload-fsm probe``: one probe round as a table (or JSON): memory per GPU and who holds it.

    offload-fsm probe [--backend auto|nvml|smi|fake] [--gpus IDS] [--engine-pid [NAME=]PID ...]
                      [--json] [--watch [SECONDS]] [--count N]

``--engine-pid`` names an engine by its root pid (the spawn parent); its whole process tree
is attributed to it. The fake backend shows a small simulated scene in which this very
process holds memory, so ``--engine-pid $$`` attributes it to the shell's tree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import anyio

from offload_fsm.commands import add_command, add_engine_pid_argument
from offload_fsm.core.errors import ConfigError
from offload_fsm.core.limits import MAX_ROUNDS, MAX_WATCH_SECONDS
from offload_fsm.probe.attribution import attribute
from offload_fsm.probe.base import GIB, GpuDevice, ProbeBackend
from offload_fsm.probe.devices import resolve_devices
from offload_fsm.probe.processes import ProcessTable, detect_pid_namespace
from offload_fsm.probe.retry import RetryingProbe
from offload_fsm.probe.select import BACKEND_NAMES, open_backend
from offload_fsm.settings import parse_positive_int, parse_positive_seconds
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus

FAKE_COTENANT_PID = 3_999_999


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "probe",
        help="measure GPU memory once (or --watch): per GPU, and per process with its owner",
        description=__doc__,
    )
    p.add_argument("--backend", choices=BACKEND_NAMES, default="auto")
    p.add_argument(
        "--gpus",
        metavar="IDS",
        help="comma-separated GPU ids: physical index, UUID (or unique prefix), PCI bus id "
        "(default: every GPU)",
    )
    p.add_argument(
        "--cuda-visible-devices",
        metavar="VALUE",
        help="read integer --gpus as CUDA ordinals under this CUDA_VISIBLE_DEVICES value",
    )
    add_engine_pid_argument(
        p, help="an engine's root pid (repeatable); its process tree is attributed to NAME"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per round")
    p.add_argument(
        "--watch",
        metavar="SECONDS",
        nargs="?",
        const="1",
        help="probe again every SECONDS (default 1) until interrupted",
    )
    p.add_argument("--count", help="with --watch: stop after this many rounds")
    p.add_argument("--smi", default="nvidia-smi", help="the nvidia-smi executable to use")
    p.add_argument("--proc-root", default="/proc", help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def parse_engine_pids(values: list[str]) -> dict[str, int]:
    engines: dict[str, int] = {}
    for value in values:
        name, sep, pid_text = value.rpartition("=")
        if not sep:
            name = f"pid{pid_text}"
        if (
            not (pid_text.isascii() and pid_text.isdigit())
            or int(pid_text) < 1
            or (sep and not name)
        ):
            raise ConfigError("--engine-pid", value, "PID or NAME=PID with a positive PID")
        if name in engines:
            raise ConfigError("--engine-pid", value, f"a name not used twice ({name!r})")
        engines[name] = int(pid_text)
    return engines


def fake_scene() -> FakeGpus:
    """Two simulated GPUs: this process holds 20 GiB on gpu0 (and a context on gpu1), and
    a co-tenant holds 6 GiB on gpu0."""
    gpus = FakeGpus(make_devices(2), reserved_bytes=512 * 1024**2)
    gpus.set_usage(os.getpid(), 0, 20 * GIB)
    gpus.set_usage(os.getpid(), 1, 600 * 1024**2)
    gpus.set_usage(FAKE_COTENANT_PID, 0, 6 * GIB)
    return gpus


def run(args: argparse.Namespace) -> int:
    engines = parse_engine_pids(args.engine_pid)
    if args.watch is not None:
        args.watch = parse_positive_seconds("--watch", args.watch, maximum=MAX_WATCH_SECONDS)
    if args.count is not None:
        args.count = parse_positive_int("--count", args.count, maximum=MAX_ROUNDS)
    return anyio.run(_probe, args, engines)


async def _probe(args: argparse.Namespace, engines: dict[str, int]) -> int:
    backend: ProbeBackend = await open_backend(
        args.backend,
        smi_executable=args.smi,
        fake=fake_scene() if args.backend == "fake" else None,
    )
    try:
        devices: tuple[GpuDevice, ...] = await backend.devices()
        if args.gpus:
            devices = resolve_devices(
                args.gpus,
                devices,
                cuda_visible_devices=args.cuda_visible_devices,
                cuda_device_order=os.environ.get("CUDA_DEVICE_ORDER"),
            )
        probe = RetryingProbe(backend)
        rounds = 0
        limit = args.count if args.watch is not None else 1
        while True:
            rnd = await probe.probe(devices)
            table = ProcessTable.snapshot(args.proc_root)
            namespace = detect_pid_namespace(args.proc_root)
            trees = {name: table.tree(pid) for name, pid in engines.items()}
            if rounds == 0:
                for name, pid in engines.items():
                    if table.available and pid not in table:
                        print(f"note: engine {name}: pid {pid} is not running", file=sys.stderr)
            report = attribute(rnd, trees, pid_namespace=namespace, table=table)
            if args.json:
                sys.stdout.write(json.dumps(report.to_dict()) + "\n")
            else:
                if rounds:
                    sys.stdout.write("\n")
                if not devices:
                    sys.stdout.write(f"backend {rnd.backend}: no GPUs\n")
                else:
                    sys.stdout.write(report.render() + "\n")
            sys.stdout.flush()
            rounds += 1
            if limit is not None and rounds >= limit:
                return 0
            await anyio.sleep(args.watch)
    finally:
        await backend.aclose()
