"""``offload-fsm`` command line: one subcommand per module in :mod:`offload_fsm.commands`.

Each command module has ``register(subparsers)`` that adds its parser and sets ``run``
(``args -> exit code``). User errors (any :class:`OffloadFsmError`) print one line naming the
input, with no traceback, and exit 2 unless the command chose another code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from offload_fsm import __version__
from offload_fsm.core.errors import OffloadFsmError
from offload_fsm.core.redact import redact

COMMAND_MODULES = ("demo", "probe", "doctor", "gate", "replay", "trace", "plot")

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    except OffloadFsmError as exc:
        print(redact(f"offload-fsm {args.command}: error: {exc}"), file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_USER_ERROR))
    except KeyboardInterrupt:
        print(f"offload-fsm {args.command}: interrupted", file=sys.stderr)
        return 130
    return code
