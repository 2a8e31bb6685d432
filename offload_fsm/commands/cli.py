"""``offload-fsm`` command line: one subcommand per module in :mod:`offload_fsm.commands`.

Each command module has ``register(subparsers)`` that adds its parser and sets ``run``
(``args -> exit code``). User errors (any :class:`OffloadFsmError`) print one line naming the
input, with no traceback, and exit 2 unless the command chose another code (also when a task
group wrapped the error). Files are written under one rule (offload_fsm.core.safe_output) and
numbers checked by one validator (offload_fsm.core.limits).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from offload_fsm import __version__
from offload_fsm.core.errors import OffloadFsmError, first_error
from offload_fsm.core.redact import redact

COMMAND_MODULES = ("demo", "probe", "doctor", "gate", "replay", "trace", "plot")

EXIT_USER_ERROR = 2


class _OneLineParser(argparse.ArgumentParser):
    """argparse's usage errors as one line (the command, the problem, where help is), exit 2:
    like every other failure of the CLI. Subcommand parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="offload-fsm",
        description="Safe, observable GPU time-sharing for RL post-training.",
    )
    parser.add_argument("--version", action="version", version=f"offload-fsm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"offload_fsm.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        print(f"offload-fsm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # An OffloadFsmError, also when a task group wrapped it in an exception group.
        err = first_error(exc, OffloadFsmError)
        if err is None:
            raise
        print(redact(f"offload-fsm {args.command}: error: {err}"), file=sys.stderr)
        return int(getattr(err, "exit_code", EXIT_USER_ERROR))
    return code
