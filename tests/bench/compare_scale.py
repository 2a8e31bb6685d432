"""The scale run's full cycle of two versions of the code, measured at the same moments:

    python -m tests.bench.compare_scale OTHER_TREE [--nodes 64] [--pairs 4]

``OTHER_TREE`` is a checkout of another commit (e.g. ``git worktree add /tmp/old <commit>``;
it needs ``tests.bench.bench_scale.cycle``, there since the fourth session). Each pair runs
both versions at once, one per core, each through its own benchmark file
(``cycle(nodes, 2, 4)``, one run), and swaps which starts first from pair to pair. This VM's
speed moves by up to 1.5x within minutes, so solo runs taken one after the other cannot
resolve a 20% change; two runs side by side see the same machine. Both are slowed by
sharing it, so the ratio is the figure to read, not the times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]  # this checkout's root

# A tree whose virtual clock needs its own asyncio loop (offload_fsm.idle) names it there.
_CHILD = (
    "import sys, anyio\n"
    "from tests.bench.bench_scale import SHIPPED, cycle\n"
    "try:\n"
    "    from offload_fsm.idle import BACKEND_OPTIONS as options\n"
    "except ImportError:\n"
    "    options = {}\n"
    "fig = anyio.run(cycle, int(sys.argv[1]), 2, 4, SHIPPED, 1, backend_options=options)\n"
    "print(fig.full_cycle)\n"
)


def _start(tree: Path, nodes: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(nodes)],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _seconds(proc: subprocess.Popen[str], tree: Path) -> float:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"compare_scale: the run in {tree} failed:\n{err[-2000:]}")
    return float(out.strip().splitlines()[-1])


def pair(this: Path, other: Path, nodes: int, other_first: bool) -> tuple[float, float]:
    """Full cycle (seconds) of ``other`` and of ``this``, run side by side."""
    if other_first:
        other_run = _start(other, nodes)
        this_run = _start(this, nodes)
    else:
        this_run = _start(this, nodes)
        other_run = _start(other, nodes)
    return _seconds(other_run, other), _seconds(this_run, this)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.compare_scale")
    parser.add_argument("other", type=Path, help="a checkout of the version to compare with")
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.pairs < 1:
        parser.error(f"--nodes and --pairs must be >= 1, got {args.nodes}, {args.pairs}")
    other = args.other.resolve()
    if not (other / "tests" / "bench" / "bench_scale.py").is_file():
        parser.error(f"{other} has no tests/bench/bench_scale.py: not a checkout of this project")
    print(f"full cycle at {args.nodes} nodes, both versions at once, {args.pairs} pairs")
    print(f"{'pair':>4}  {'other':>10}  {'this':>10}  {'this/other':>10}")
    for i in range(1, args.pairs + 1):
        before, now = pair(HERE, other, args.nodes, other_first=i % 2 == 0)
        print(f"{i:>4}  {before * 1e3:7.1f} ms  {now * 1e3:7.1f} ms  {now / before:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
