"""Command-line options shared by ``offload-fsm demo`` and the drivers' scripts."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from offload_fsm.core.errors import ConfigError
from offload_fsm.core.limits import MAX_SEED, MAX_SETTLE, MAX_SIM_GPUS, MAX_STEPS
from offload_fsm.drivers.runner import RunOptions
from offload_fsm.drivers.sim_world import SimOptions
from offload_fsm.drivers.topology import PipelineTopology
from offload_fsm.settings import (
    DEFAULT_THRESHOLD_GIB,
    THRESHOLD_ENV,
    gib_to_bytes,
    parse_positive_gib,
    parse_positive_int,
    parse_positive_seconds,
    parse_threshold_gib,
    threshold_from_env,
)


def add_run_arguments(p: argparse.ArgumentParser, *, steps: int = 5) -> None:
    p.add_argument("--steps", default=None, help=f"pipeline steps (default {steps})")
    p.add_argument(
        "--threshold",
        metavar="GIB",
        default=None,
        help=f"wake gate: max whole-GPU used GiB (default ${THRESHOLD_ENV}, "
        f"else {DEFAULT_THRESHOLD_GIB:g})",
    )
    p.add_argument("--settle", default=None, help="rounds the gate condition must hold (3)")
    p.add_argument("--gate-timeout", metavar="S", default=None, help="wake gate deadline (60 s)")
    p.add_argument("--seed", default="0", help="simulation seed (late releases, faults)")
    p.add_argument("--out", metavar="DIR", default="runs", help="output directory (runs/)")
    p.add_argument("--run-id", default=None, help="run id (default: time-stamped)")
    p.add_argument("--gpus", metavar="N", default="4", help="simulated GPU count (4)")
    p.add_argument("--gpu-gib", metavar="GIB", default="80", help="simulated GPU size (80)")
    p.add_argument("--rollout", metavar="S", default="2", help="rollout time per step (2 s)")
    p.add_argument("--train", metavar="S", default="3", help="train time per step (3 s)")
    p.add_argument("--no-cotenant", action="store_true", help="no co-tenant visits a GPU")
    p.add_argument(
        "--late-release-share",
        metavar="F",
        default="0.3",
        help="share of releases that return before memory drops (0.3)",
    )
    p.add_argument(
        "--fail",
        metavar="ENGINE:CALL[:N]",
        default=None,
        help="inject an engine error, e.g. p2.engine1:resume:2",
    )
    p.add_argument("--quiet", action="store_true", help="no live progress lines")


def run_options(
    args: argparse.Namespace,
    topologies: tuple[PipelineTopology, ...],
    command: str,
    config: Mapping[str, Any] | None = None,
) -> RunOptions:
    """Flags first, then a configuration file's ``[run]`` table, then the defaults."""
    config = config or {}

    def pick(flag: str | None, key: str, default: object) -> object:
        return flag if flag is not None else config.get(key, default)

    if args.threshold is not None:
        threshold = parse_threshold_gib("--threshold", args.threshold)
        name, raw = "--threshold", args.threshold
    elif "threshold_gib" in config:
        threshold = parse_threshold_gib("threshold_gib", config["threshold_gib"])
        name, raw = "threshold_gib", config["threshold_gib"]
    else:
        threshold, name = threshold_from_env(os.environ)
        raw = os.environ.get(name, f"{DEFAULT_THRESHOLD_GIB:g}")
    if topologies and getattr(args, "engines", "sim") == "sim":
        # Simulated GPUs: checked here, before anything is written (real GPUs are checked
        # when their engines register).
        gpu_bytes = gib_to_bytes(parse_positive_gib("--gpu-gib", args.gpu_gib))
        if threshold >= gpu_bytes:
            raise ConfigError(
                name,
                raw,
                f"a threshold below the simulated {args.gpu_gib} GiB GPUs (--gpu-gib); one "
                "the GPU cannot exceed turns the wake gate off",
            )
    if not str(args.out).strip():  # Path("") is the working directory: never implied
        raise ConfigError("--out", args.out, "a directory for the run's log (e.g. runs)")
    share = float(args.late_release_share) if _is_float(args.late_release_share) else -1.0
    if not 0.0 <= share <= 1.0:
        raise ConfigError("--late-release-share", args.late_release_share, "a number in [0, 1]")
    return RunOptions(
        topologies=topologies,
        threshold_bytes=threshold,
        steps=parse_positive_int("--steps", pick(args.steps, "steps", 5), maximum=MAX_STEPS),  # type: ignore[arg-type]
        out_dir=Path(args.out),
        run_id=args.run_id,
        rollout_s=parse_positive_seconds("--rollout", args.rollout),
        train_s=parse_positive_seconds("--train", args.train),
        settle=parse_positive_int("--settle", pick(args.settle, "settle", 3), maximum=MAX_SETTLE),  # type: ignore[arg-type]
        gate_timeout_s=parse_positive_seconds(
            "--gate-timeout",
            pick(args.gate_timeout, "gate_timeout_s", 60),  # type: ignore[arg-type]
        ),
        progress=not args.quiet,
        command=command,
        stop_on_signals=True,  # a command: SIGINT, SIGTERM and SIGHUP end it cleanly
        sim=SimOptions(
            gpu_count=parse_positive_int("--gpus", args.gpus, maximum=MAX_SIM_GPUS),
            gpu_total_gib=parse_positive_gib("--gpu-gib", args.gpu_gib),
            seed=parse_positive_int("--seed", args.seed, minimum=0, maximum=MAX_SEED),
            late_release_share=share,
            cotenant=not args.no_cotenant,
            fail=args.fail,
        ),
    )


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
