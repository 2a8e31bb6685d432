"""The scale run's full cycle of two versions of the code, measured at the same moments:

    python -m tests.bench.compare_scale OTHER_TREE [--nodes 64] [--pairs 4]
    python -m tests.bench.compare_scale OTHER_TREE --overhead [--engines 1,64,512] [--pairs 2]

``--overhead`` runs this checkout's ``bench_overhead.py`` (release/wake cycles of instant
engines, CPU time per cycle) against each tree's package instead, and prints each tree's
overhead per engine and its share of the physical release + resume time side by side.

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

# A tree whose virtual clock needs its own asyncio loop (offload_fsm.timing.idle) names it there.
_CHILD = (
    "import sys, anyio\n"
    "from tests.bench.bench_scale import SHIPPED, cycle\n"
    "try:\n"
    "    from offload_fsm.timing.idle import BACKEND_OPTIONS as options\n"
    "except ImportError:\n"
    "    options = {}\n"
    "fig = anyio.run(cycle, int(sys.argv[1]), 2, 4, SHIPPED, 1, backend_options=options)\n"
    "print(fig.full_cycle)\n"
)


def _start(tree: Path, nodes: int, overhead: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    if overhead:  # this checkout's benchmark file, the tree's package (PYTHONPATH)
        bench = str(HERE / "tests" / "bench" / "bench_overhead.py")
        argv = [sys.executable, bench, "--child", str(nodes), "3"]
    else:
        argv = [sys.executable, "-c", _CHILD, str(nodes)]
    return subprocess.Popen(
        argv,
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


def pair(
    this: Path, other: Path, nodes: int, other_first: bool, overhead: bool = False
) -> tuple[float, float]:
    """Full cycle (seconds) of ``other`` and of ``this``, run side by side (``overhead``:
    the CPU seconds of a release/wake cycle of ``nodes`` instant engines)."""
    if other_first:
        other_run = _start(other, nodes, overhead)
        this_run = _start(this, nodes, overhead)
    else:
        this_run = _start(this, nodes, overhead)
        other_run = _start(other, nodes, overhead)
    return _seconds(other_run, other), _seconds(this_run, this)


def overhead(this: Path, other: Path, engines: Sequence[int], pairs: int) -> None:
    """Per size, the fastest of ``pairs`` side-by-side runs of each tree."""
    from tests.bench.bench_overhead import PHYSICAL_MS

    print(
        f"release/wake cycle of N instant engines, CPU time per cycle, both trees at once, "
        f"fastest of {pairs} pairs; share = per engine / {PHYSICAL_MS[0]:.0f} ms physical "
        f"release + resume (shared/gpu-facts.md: {PHYSICAL_MS[0]:.0f}-{PHYSICAL_MS[1]:.0f} ms)"
    )
    print(
        f"{'engines':>7}  {'other/engine':>12}  {'share':>6}  {'this/engine':>12}  {'share':>6}"
        f"  {'this/other':>10}"
    )
    for n in engines:
        runs = [pair(this, other, n, i % 2 == 0, overhead=True) for i in range(1, pairs + 1)]
        before, now = min(r[0] for r in runs) / n, min(r[1] for r in runs) / n
        print(
            f"{n:>7}  {before * 1e6:9.1f} µs  {before * 1e5 / PHYSICAL_MS[0]:5.2f}%  "
            f"{now * 1e6:9.1f} µs  {now * 1e5 / PHYSICAL_MS[0]:5.2f}%  {now / before:10.2f}",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.compare_scale")
    parser.add_argument("other", type=Path, help="a checkout of the version to compare with")
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--overhead", action="store_true", help="release/wake overhead instead")
    parser.add_argument("--engines", default="1,64,512", help="sizes for --overhead")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.pairs < 1:
        parser.error(f"--nodes and --pairs must be >= 1, got {args.nodes}, {args.pairs}")
    other = args.other.resolve()
    if not (other / "tests" / "bench" / "bench_scale.py").is_file():
        parser.error(f"{other} has no tests/bench/bench_scale.py: not a checkout of this project")
    if args.overhead:
        engines = [int(x) for x in args.engines.split(",")]
        if any(n < 1 for n in engines):
            parser.error(f"--engines must be >= 1 each, got {args.engines}")
        overhead(HERE, other, engines, args.pairs)
        return 0
    print(f"full cycle at {args.nodes} nodes, both versions at once, {args.pairs} pairs")
    print(f"{'pair':>4}  {'other':>10}  {'this':>10}  {'this/other':>10}")
    for i in range(1, args.pairs + 1):
        before, now = pair(HERE, other, args.nodes, other_first=i % 2 == 0)
        print(f"{i:>4}  {before * 1e3:7.1f} ms  {now * 1e3:7.1f} ms  {now / before:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
