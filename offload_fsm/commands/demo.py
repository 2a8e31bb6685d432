"""``offload-fsm demo``: the dual-pipeline topology on simulated GPUs and engines.

Two pipelines (default P1 train=[0] infer=[0,1,2]; P2 train=[3] infer=[1,2,3], or the
``MILES_DUAL_*`` environment) run concurrently in virtual time; every wake is gated on
measured (simulated) memory. Writes the event log, prints live progress and a summary.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import anyio

from offload_fsm.config import parse_positive_int
from offload_fsm.drivers.cli_options import add_run_arguments, run_options
from offload_fsm.drivers.report import print_report
from offload_fsm.drivers.runner import run_simulated
from offload_fsm.topology import dual_topology


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the dual-pipeline cycle on simulated GPUs (no GPU needed)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.add_argument(
        "--backend",
        choices=["fake"],
        default="fake",
        help="probe backend (the embedded simulator: fake)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    gpu_count = parse_positive_int("--gpus", args.gpus)
    opts = run_options(args, dual_topology(gpu_count, os.environ), "offload-fsm demo")
    outcome = anyio.run(run_simulated, opts)
    return print_report(outcome, sys.stdout)
