"""``offload-fsm demo``: the dual-pipeline topology, every wake gated on measured memory.

``--engines sim`` (default): simulated GPUs and engines in virtual time, no GPU needed. Two
pipelines (default P1 train=[0] infer=[0,1,2]; P2 train=[3] infer=[1,2,3], or the
``MILES_DUAL_*`` environment) run concurrently; some releases return before the memory
drops and a co-tenant visits a shared GPU.

``--engines torch``: stand-in engine and trainer processes holding real GPU memory (torch;
``--tms`` pauses with torch_memory_saver), probed with NVML (else nvidia-smi), in real time.
4+ GPUs run the dual topology; fewer run one pipeline whose trainer shares GPU 0.

Writes the event log, prints live progress, then the replayed summary (and a timeline PNG
with the plot extra). Exit 0 when the run succeeded and its log replays clean, 1 when it
failed (an engine, a gate, or its event log could not be written: a full or read-only disk),
2 for bad input (nothing is written then); SIGINT, SIGTERM or SIGHUP cancel the step in
progress, end the log with ``run_finished`` (``cancelled``, the signal named) and exit
128 + the signal (130, 143, 129).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import anyio

from offload_fsm.commands import add_command
from offload_fsm.core.errors import ConfigError, EventLogError, first_error
from offload_fsm.core.limits import MAX_SIM_GPUS
from offload_fsm.core.safe_output import check_output
from offload_fsm.drivers.cli_options import add_run_arguments, run_options
from offload_fsm.drivers.report import print_report
from offload_fsm.drivers.runner import RunOutcome, run_simulated, run_standin
from offload_fsm.drivers.topology import dual_topology
from offload_fsm.events.eventlog import log_path
from offload_fsm.probe.select import BACKEND_NAMES
from offload_fsm.settings import parse_positive_gib, parse_positive_int
from offload_fsm.timing.idle import run as run_virtual


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "demo",
        help="run the dual-pipeline cycle (simulated GPUs by default; --engines torch: real)",
        description=__doc__,
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
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    outcome: RunOutcome
    try:
        if args.engines == "sim":
            if args.backend not in (None, "fake"):
                raise ConfigError("--backend", args.backend, "fake with --engines sim")
            gpu_count = parse_positive_int("--gpus", args.gpus, maximum=MAX_SIM_GPUS)
            opts = run_options(args, dual_topology(gpu_count, os.environ), "offload-fsm demo")
            check_run_outputs(opts.out_dir, opts.run_id)
            outcome = run_virtual(run_simulated, opts)  # virtual time
        else:
            outcome = anyio.run(_torch, args)
    except Exception as exc:
        # The run's own log could not be written (a full or read-only disk): the run was
        # stopped; one line, exit 1 (a failed run), no traceback from the task group.
        err = first_error(exc, EventLogError)
        if err is None:
            raise
        print(
            f"offload-fsm demo: error: {err}; the run was stopped (the log holds what was "
            "written before)",
            file=sys.stderr,
        )
        return 1
    return print_report(outcome, sys.stdout)


def check_run_outputs(out_dir: Path, run_id: str | None) -> None:
    """Before anything is written: the log and picture of a named run must be new files
    (offload_fsm.core.safe_output; logs are never reused). A generated run id is always new."""
    if run_id is None:
        return
    log = log_path(out_dir, run_id)
    for path, suffix in ((log, ".jsonl"), (log.with_suffix(".png"), ".png")):
        if os.path.lexists(path):
            check_output(
                "--run-id",
                path,
                suffixes=(suffix,),
                exists_hint="one log and picture per run; pick another --run-id",
            )


async def _torch(args: argparse.Namespace) -> RunOutcome:
    from offload_fsm.core.errors import ConfigError
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
