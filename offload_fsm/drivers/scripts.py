"""Entry points of drivers/run_miles_dual.py and drivers/run_miles_rlix.py."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial

import anyio

from offload_fsm.core.errors import OffloadFsmError
from offload_fsm.core.redact import redact
from offload_fsm.drivers.cli_options import add_run_arguments, run_options
from offload_fsm.drivers.config_file import load_run_config
from offload_fsm.drivers.report import print_report
from offload_fsm.drivers.runner import run_configured, run_simulated
from offload_fsm.drivers.topology import PipelineTopology, dual_topology, parse_gpu_list
from offload_fsm.settings import parse_positive_int
from offload_fsm.timing.idle import run as run_virtual


def dual_main(argv: Sequence[str] | None = None) -> int:
    """Two pipelines on partly overlapping GPUs (``MILES_DUAL_*`` or the default topology)."""
    p = argparse.ArgumentParser(prog="run_miles_dual.py", description=dual_main.__doc__)
    add_run_arguments(p)
    add_config_argument(p)
    p.add_argument("--gpus-per-engine", default="1")
    args = p.parse_args(argv)

    def build() -> tuple[PipelineTopology, ...]:
        return dual_topology(
            parse_positive_int("--gpus", args.gpus),
            os.environ,
            parse_positive_int("--gpus-per-engine", args.gpus_per_engine),
        )

    return _run(args, build, "run_miles_dual.py")


def rlix_main(argv: Sequence[str] | None = None) -> int:
    """One pipeline whose trainer GPUs are a subset of its engine GPUs."""
    p = argparse.ArgumentParser(prog="run_miles_rlix.py", description=rlix_main.__doc__)
    add_run_arguments(p)
    p.add_argument("--train-gpus", metavar="IDS", default="0,1", help="trainer GPUs (0,1)")
    p.add_argument("--infer-gpus", metavar="IDS", default="0,1,2,3", help="engine GPUs (0-3)")
    p.add_argument("--gpus-per-engine", default="1")
    add_config_argument(p)
    args = p.parse_args(argv)

    def build() -> tuple[PipelineTopology, ...]:
        count = parse_positive_int("--gpus", args.gpus)
        return (
            PipelineTopology(
                "p1",
                parse_gpu_list("--train-gpus", args.train_gpus, count),
                parse_gpu_list("--infer-gpus", args.infer_gpus, count),
                parse_positive_int("--gpus-per-engine", args.gpus_per_engine),
            ),
        )

    return _run(args, build, "run_miles_rlix.py")


def add_config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="real engines (SGLang/vLLM URLs, trainer callables) from a TOML/JSON "
        "file, probed on this machine (docs/integration.md); default: simulated",
    )


def _run(
    args: argparse.Namespace, build: Callable[[], tuple[PipelineTopology, ...]], command: str
) -> int:
    try:
        if args.config is not None:  # real engines from the file, real probe, real time
            config = load_run_config(args.config)
            opts = run_options(args, (), command, config.run)
            outcome = anyio.run(partial(run_configured, opts, config))
        else:
            opts = run_options(args, build(), command)
            outcome = run_virtual(run_simulated, opts)  # virtual time
        return print_report(outcome, sys.stdout)
    except OffloadFsmError as exc:
        print(redact(f"{command}: error: {exc}"), file=sys.stderr)
        return 2
