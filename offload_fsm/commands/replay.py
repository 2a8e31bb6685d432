"""``offload-fsm replay LOG``: re-drive every engine's lifecycle from a log, check invariants.

Exit codes: 0 clean, 1 invariant violations, 2 unreadable input (the message names the line).
A last line cut short by a crash is reported, not fatal; a log without ``run_finished`` is
reported as truncated.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from offload_fsm.commands import (
    add_command,
    add_force_argument,
    add_log_argument,
    add_until_argument,
    parse_until,
)
from offload_fsm.core.errors import ConfigError, OffloadFsmError
from offload_fsm.core.redact import redact
from offload_fsm.replay import ReplayResult, replay_path
from offload_fsm.replay.summary import render, render_states, summarize, to_json

EXIT_CLEAN, EXIT_VIOLATIONS, EXIT_UNREADABLE = 0, 1, 2
DESCRIPTION = """\
Re-drive every engine's lifecycle from a run's event log and check the invariants
(docs/replay.md): legal transitions, gated wakes, GPU sharing, how the run ended, ordering.

exit codes: 0 clean, 1 invariant violations, 2 unreadable input (the message names the line).
A last line cut short by a crash is reported, not fatal; a log without run_finished is
reported as truncated."""


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "replay",
        help="replay an event log: check invariants, summarize, reconstruct states",
        description=DESCRIPTION,
    )
    add_log_argument(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_until_argument(
        p, help="stop after the event with this sequence number and show every engine's state"
    )
    p.add_argument("--engine", metavar="ID", help="show only this engine, with its transitions")
    p.add_argument(
        "--metrics-out",
        metavar="FILE",
        help="also write Prometheus metrics of the run to FILE, .prom or .txt (needs the "
        "metrics extra)",
    )
    add_force_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    args.until = parse_until(args.until)
    observers: list[Any] = []
    metrics = None
    metrics_path = None
    if args.metrics_out is not None:
        from offload_fsm.core.safe_output import check_output
        from offload_fsm.replay.metrics import METRICS_SUFFIXES, EventMetrics

        metrics_path = check_output(
            "--metrics-out",
            args.metrics_out,
            suffixes=METRICS_SUFFIXES,
            inputs=(args.log,),
            force=args.force,
        )

        metrics = EventMetrics()
        observers.append(metrics)
    try:
        result = replay_path(
            args.log, until=args.until, history_for=args.engine, observers=observers
        )
    except OffloadFsmError as exc:
        print(redact(f"offload-fsm replay: {args.log}: {exc}"), file=sys.stderr)
        return EXIT_UNREADABLE
    if args.engine is not None and args.engine not in result.engines:
        known = ", ".join(result.engines) or "none"
        raise ConfigError("--engine", args.engine, f"an engine of this run ({known})")
    if metrics is not None and metrics_path is not None:
        metrics.write(metrics_path)
    _print(result, args)
    return EXIT_VIOLATIONS if result.violation_count else EXIT_CLEAN


def _print(result: ReplayResult, args: argparse.Namespace) -> None:
    summary = summarize(result, engine_id=args.engine)
    if args.json:
        sys.stdout.buffer.write(to_json(summary) + b"\n")
        sys.stdout.flush()
        return
    if args.until is not None or args.engine is not None:
        print(render_states(result, args.engine))
        print(f"\n{result.violation_count} violation(s) up to here")
        for v in result.violations[:50]:
            print(redact(f"  {v}"))
        for note in result.notes:
            print(redact(f"  note: {note}"))
        return
    print(render(summary))
