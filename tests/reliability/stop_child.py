"""``offload-fsm demo`` on a chosen anyio backend, for the stop-signal rows:
``python -m tests.reliability.stop_child BACKEND [demo flags...]``.

The command's own code path (its parser, ``run_options``, ``run_simulated``, ``print_report``),
run with ``anyio.run(..., backend=BACKEND)`` instead of the command's default (asyncio), so the
signal handling is proved on trio as well."""

from __future__ import annotations

import os
import sys

import anyio

from offload_fsm.commands.cli import build_parser
from offload_fsm.drivers.cli_options import run_options
from offload_fsm.drivers.report import print_report
from offload_fsm.drivers.runner import run_simulated
from offload_fsm.drivers.topology import dual_topology


def main(argv: list[str]) -> int:
    backend, *rest = argv
    args = build_parser().parse_args(["demo", *rest])
    opts = run_options(args, dual_topology(int(args.gpus), os.environ), "offload-fsm demo")
    outcome = anyio.run(run_simulated, opts, backend=backend)
    return print_report(outcome, sys.stdout)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
