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
