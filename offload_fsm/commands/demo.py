"""``offload-fsm demo``: the dual-pipeline topology, every wake gated on measured memory.

``--engines sim`` (default): simulated GPUs and engines in virtual time, no GPU needed. Two
pipelines (default P1 train=[0] infer=[0,1,2]; P2 train=[3] infer=[1,2,3], or the
``MILES_DUAL_*`` environment) run concurrently; some releases return before the memory
drops and a co-tenant visits a shared GPU.

``--engines torch``: stand-in engine and trainer processes holding real GPU memory (torch;
``--tms`` pauses with torch_memory_saver), probed with NVML (else nvidia-smi), in real time.
4+ GPUs run the dual topology; fewer run one pipeline whose trainer shares GPU 0.

Writes the event log, prints live progress, then the replayed summary (and a timeline PNG
with the plot extra). Exit 0 when the run succeeded and its log replays clean.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

import anyio

from offload_fsm.config import parse_positive_gib, parse_positive_int
from offload_fsm.config_file import TOPOLOGY_KEYS, load_run_config
from offload_fsm.drivers.cli_options import add_run_arguments, run_options
from offload_fsm.drivers.report import print_report
from offload_fsm.drivers.runner import RunOutcome, run_simulated, run_standin
from offload_fsm.errors import ConfigError
from offload_fsm.probe.select import BACKEND_NAMES
from offload_fsm.topology import DUAL_ENV, PipelineTopology, dual_topology


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the dual-pipeline cycle (simulated GPUs by default; --engines torch: real)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.add_argument(
        "--engines",
        choices=["sim", "torch"],
        default="sim",
        help="simulated engines (default) or real torch stand-in processes",
    )
    p.add_argument(
        "--backend",
        choices=["fake", *(b for b in BACKEND_NAMES if b != "fake")],
        default=None,
        help="probe backend: fake with --engines sim; auto|nvml|smi with torch",
    )
    p.add_argument("--engine-gib", default="24", help="torch stand-in engine footprint (24)")
    p.add_argument("--trainer-gib", default="16", help="torch stand-in trainer footprint (16)")
    p.add_argument(
        "--tms",
        action="store_true",
        help="torch stand-ins release with torch_memory_saver pause/resume",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="run settings from a TOML file (offload_fsm/config_file.py); flags win",
    )
    p.set_defaults(run=run)
    p.set_defaults(demo_defaults=vars(p.parse_args([])))


def run(args: argparse.Namespace) -> int:
    outcome: RunOutcome
    env: Mapping[str, str] = os.environ
    from_file: dict[str, str] = {}  # flag -> the file's key that set it
    if args.config is not None:
        config = load_run_config(args.config)
        for key, (dest, value) in config.by_key().items():
            if getattr(args, dest) == args.demo_defaults.get(dest):  # not set by a flag
                setattr(args, dest, value if isinstance(value, bool) else str(value))
                from_file["--" + dest.replace("_", "-")] = f"{args.config}: {key}"
        if config.topology is not None:  # the file's topology replaces MILES_DUAL_*
            env = config.topology_env()
    if args.engines == "sim":
        if args.backend not in (None, "fake"):
            raise ConfigError("--backend", args.backend, "fake with --engines sim")
        gpu_count = parse_positive_int("--gpus", args.gpus)
        try:
            opts = run_options(args, _topologies(args, gpu_count, env), "offload-fsm demo")
        except ConfigError as exc:  # a value the file set: name the file and its key
            if exc.name not in from_file:
                raise
            raise ConfigError(from_file[exc.name], exc.value, exc.accepted) from None
        outcome = anyio.run(run_simulated, opts)
    else:
        outcome = anyio.run(_torch, args)
    return print_report(outcome, sys.stdout)


def _topologies(
    args: argparse.Namespace, gpu_count: int, env: Mapping[str, str]
) -> tuple[PipelineTopology, ...]:
    if args.config is None or env is os.environ:
        return dual_topology(gpu_count, env)
    try:
        return dual_topology(gpu_count, env)
    except ConfigError as exc:  # name the file's key, not the variable it stands in for
        key = dict(zip(DUAL_ENV, TOPOLOGY_KEYS, strict=True)).get(exc.name, exc.name)
        name = f"{args.config}: [topology] {key}"
        raise ConfigError(name, exc.value, exc.accepted) from None


async def _torch(args: argparse.Namespace) -> RunOutcome:
    from offload_fsm.drivers.standin_world import topologies_for
    from offload_fsm.probe.select import open_backend

    backend = args.backend or "auto"
    if backend == "fake":
        raise ConfigError("--backend", backend, "auto, nvml or smi with --engines torch")
    probe = await open_backend(backend)
    try:
        topologies = topologies_for(await probe.devices())
    finally:
        await probe.aclose()
    opts = run_options(args, topologies, "offload-fsm demo --engines torch")
    return await run_standin(
        opts,
        backend=backend,
        engine_gib=parse_positive_gib("--engine-gib", args.engine_gib),
        trainer_gib=parse_positive_gib("--trainer-gib", args.trainer_gib),
        tms=args.tms,
    )
