"""``offload-fsm plot LOG -o timeline.png``: a timeline picture of a run (the plot extra)."""

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
from offload_fsm.core.errors import EventDecodeError, EventLogError
from offload_fsm.core.redact import redact


def register(sub: Any) -> None:
    p = sub.add_parser("plot", help="draw a run's timeline (needs the plot extra: matplotlib)")
    add_log_argument(p)
    p.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="image to write (.png, .svg, .pdf)"
    )
    add_until_argument(p, help="stop after this sequence number")
    add_force_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from offload_fsm.replay.plot import plot_log  # MissingExtra (exit 2) names the extra

    until = parse_until(args.until)
    try:
        result = plot_log(args.log, args.output, until=until, force=args.force)
    except (EventDecodeError, EventLogError) as exc:
        print(redact(f"offload-fsm plot: {args.log}: {exc}"), file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {result.violation_count} violation(s)")
    return 1 if result.violation_count else 0
