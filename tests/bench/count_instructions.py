"""Deterministic cost of one simulated full cycle per node: CPU instructions (valgrind) and
Python calls (cProfile), where wall time on a shared VM moves too much to compare two
versions of the code (see docs/performance.md).

    python -m tests.bench.count_instructions [--nodes 4] [--share auto|on|off]

The scale run of :mod:`tests.bench.bench_scale` is made with 2 steps and with 6 steps; one
full cycle per node is (6-step - 2-step) / 4 / nodes, so set-up and the first step (which
has no expand) cancel out. Instructions need valgrind (``callgrind``, counted in a child
process); the call count needs nothing. A diagnosis, not a benchmark: it says how much work
a cycle is, not how long it takes.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence

from offload_fsm.timing.idle import run as run_virtual
from tests.bench.bench_scale import Variant, scale_run

SHARE = {"auto": None, "on": True, "off": False}
SHORT, LONG = 2, 6


def _variant(share: str) -> Variant:
    return Variant(f"share={share}", share_rounds=SHARE[share])


def calls(nodes: int, steps: int, share: str) -> int:
    """Python function calls (cProfile's count, builtins included) in one scale run."""
    profile = cProfile.Profile()

    async def run() -> None:
        profile.enable()
        await scale_run(nodes, steps, _variant(share))
        profile.disable()

    run_virtual(run)
    return sum(stat[1] for stat in pstats.Stats(profile).stats.values())  # type: ignore[attr-defined]


def instructions(nodes: int, steps: int, share: str) -> int:
    """Instructions valgrind's callgrind counts for a child process making one scale run."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("count_instructions: valgrind is not installed (apt install valgrind)")
    child = [sys.executable, "-m", "tests.bench.count_instructions", "--child", str(steps)]
    child += ["--nodes", str(nodes), "--share", share]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", *child],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"count_instructions: valgrind run failed:\n{done.stderr[-2000:]}")
    return int(found[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.count_instructions")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--share", choices=sorted(SHARE), default="auto")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # steps, under valgrind
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error(f"--nodes must be >= 1, got {args.nodes}")
    if args.child is not None:
        run_virtual(scale_run, args.nodes, args.child, _variant(args.share))
        return 0
    per = (LONG - SHORT) * args.nodes
    short = calls(args.nodes, SHORT, args.share)  # first: it also pays one-time costs
    # (lazy imports, caches), which then stay out of the difference
    call_count = (calls(args.nodes, LONG, args.share) - short) / per
    print(f"{args.nodes} nodes, probe rounds shared: {args.share}; per node and full cycle:")
    print(f"  Python calls (cProfile)       {call_count:12,.0f}")
    ins = instructions(args.nodes, LONG, args.share) - instructions(args.nodes, SHORT, args.share)
    print(f"  instructions (valgrind)       {ins / per / 1e6:12.2f} M")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
