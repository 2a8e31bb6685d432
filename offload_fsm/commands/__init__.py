"""One module per ``offload-fsm`` subcommand (see :mod:`offload_fsm.commands.cli`), and the argument
definitions several of them share."""

from __future__ import annotations

import argparse
from typing import Any


def add_command(sub: Any, name: str, *, help: str, description: str | None) -> Any:
    """A subcommand whose ``--help`` shows ``description`` (the module docstring) as written."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_log_argument(p: Any) -> None:
    """The positional event log that replay, trace and plot read."""
    p.add_argument("log", metavar="LOG.jsonl", help="event log (JSON lines) of one run")


def add_engine_pid_argument(p: Any, *, help: str) -> None:
    """``--engine-pid [NAME=]PID`` (repeatable), parsed by ``probe.parse_engine_pids``."""
    p.add_argument("--engine-pid", metavar="[NAME=]PID", action="append", default=[], help=help)


def add_until_argument(p: Any, *, help: str) -> None:
    """``--until SEQ``, checked by :func:`parse_until` when the command runs (one line)."""
    p.add_argument("--until", metavar="SEQ", help=help)


def parse_until(raw: str | None) -> int | None:
    """``--until``: a sequence number >= 0 (the same limits in replay, trace and plot)."""
    from offload_fsm.core.limits import MAX_SEQ, check_number

    if raw is None:
        return None
    return int(
        check_number(
            "--until", raw, minimum=0, maximum=MAX_SEQ, integer=True, what="a sequence number"
        )
    )


def add_force_argument(p: Any) -> None:
    """``--force``: replace an existing regular file (never a symlink, device, FIFO, directory
    or the command's input; offload_fsm.core.safe_output)."""
    p.add_argument(
        "--force",
        action="store_true",
        help="replace FILE if it is an existing regular file (never anything else)",
    )
