"""``offload-fsm trace LOG -o run.json``: a Chrome/Perfetto trace of a run (ui.perfetto.dev)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from offload_fsm.commands import (
    add_force_argument,
    add_log_argument,
    add_until_argument,
    parse_until,
)
from offload_fsm.core.errors import OffloadFsmError
from offload_fsm.core.redact import redact
from offload_fsm.core.safe_output import OutputError
from offload_fsm.replay.trace import write_trace


def register(sub: Any) -> None:
    p = sub.add_parser("trace", help="write a Chrome/Perfetto trace (JSON) of an event log")
    add_log_argument(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="trace JSON to write")
    add_until_argument(p, help="stop after this sequence number")
    add_force_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    until = parse_until(args.until)
    try:
        result, stats = write_trace(args.log, args.output, until=until, force=args.force)
    except OutputError:
        raise  # names the output path itself
    except OffloadFsmError as exc:
        print(redact(f"offload-fsm trace: {args.log}: {exc}"), file=sys.stderr)
        return 2
    print(
        f"wrote {args.output}: {stats.trace_events} trace events, {stats.engines} engines, "
        f"{stats.gpus} GPUs, {result.violation_count} violation(s); open it in ui.perfetto.dev"
    )
    return 1 if result.violation_count else 0
