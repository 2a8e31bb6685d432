"""Run time, plot time and peak memory side by side: does the picture cost more than the run?

    python -m tests.bench.bench_plot [--gpus 8,64,500] [--steps 1] [--timeout 300]
                                     [--old CHECKOUT] [--events N]

For each GPU count: a simulated ``demo`` run (dual topology, virtual time, no report) in a
fresh interpreter, then ``offload-fsm plot`` of its log in another; each process's wall
time and peak RSS (``wait4``'s ``ru_maxrss``) are printed. ``--old CHECKOUT`` plots the same
logs with another checkout's code as well (e.g. ``git worktree add /tmp/old20 6703bea``: the
code before the plot streamed and capped its lanes); a plot that runs past ``--timeout`` is
killed and shown as ``>T``. ``--events N[,N]`` adds a row for a long generated log of about N
events (offload_fsm.testing.synthetic, 4 GPUs, as bench_replay writes them; its "run" column is
the time to generate it): ``--events 2000000`` is the bounded-memory case.
Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RUN = """
import os, sys
from offload_fsm.commands import cli
from offload_fsm.drivers.cli_options import run_options
from offload_fsm.drivers.runner import run_simulated
from offload_fsm.drivers.topology import dual_topology
from offload_fsm.timing.idle import run as run_virtual
out, run_id, gpus, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
args = cli.build_parser().parse_args(
    ["demo", "--quiet", "--steps", steps, "--gpus", str(gpus), "--out", out, "--run-id", run_id]
)
opts = run_options(args, dual_topology(gpus, os.environ), "bench_plot")
outcome = run_virtual(run_simulated, opts)  # virtual time, as the demo runs it
print(outcome.events)
"""
FLOOR = "import offload_fsm.replay.plot as p; p._matplotlib(); import numpy"
GENERATE = """
import sys
from offload_fsm.testing.synthetic import SimConfig, write_sim_log
write_sim_log(sys.argv[1], SimConfig(steps=max(1, int(sys.argv[2]) // 101), co_tenant_p=0.3))
with open(sys.argv[1], "rb") as f:
    print(sum(1 for _ in f))
"""


def measure(argv: list[str], code_root: Path, timeout: float) -> tuple[float | None, float, str]:
    """(wall seconds or None past the timeout, peak RSS MiB, stdout) of one process."""
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    with tempfile.TemporaryFile() as sink:  # not a pipe: a chatty child never blocks
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=code_root, env=env, stdout=sink, stderr=sink)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = -9
                return None, usage.ru_maxrss / 1024, ""
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        sink.seek(0)
        out = sink.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{out}")
    return wall, usage.ru_maxrss / 1024, out


def fmt(wall: float | None, rss: float, timeout: float) -> str:
    shown = f">{timeout:g}" if wall is None else f"{wall:.2f}"
    return f"{shown:>8} s {rss:7.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_plot", description=__doc__)
    ap.add_argument("--gpus", default="8,64,500", help="GPU counts (8,64,500)")
    ap.add_argument("--steps", default="1", help="pipeline steps of each run (1)")
    ap.add_argument("--timeout", type=float, default=300.0, help="kill a plot after (300 s)")
    ap.add_argument("--old", metavar="CHECKOUT", help="also plot with this checkout's code")
    ap.add_argument("--events", metavar="N[,N]", help="add generated logs of ~N events")
    a = ap.parse_args(argv)
    rows = [(int(g), a.steps) for g in a.gpus.split(",") if g]
    rows += [(4, f"~{int(n)}") for n in (a.events or "").split(",") if n]
    old = Path(a.old).resolve() if a.old else None
    py = sys.executable
    head = f"{'GPUs':>5} {'steps':>6} {'events':>9}  {'run (wall, peak RSS)':>22}  "
    head += f"{'plot':>22}  {'plot/run':>8}"
    if old is not None:
        head += f"  {'plot, old code':>22}"
    floor, floor_rss, _ = measure([py, "-c", FLOOR], ROOT, a.timeout)
    what = "a plot process's floor (interpreter, offload_fsm, matplotlib):"
    print(f"{what} {fmt(floor, floor_rss, a.timeout)}")
    print(head)
    with tempfile.TemporaryDirectory(prefix="bench_plot-") as tmp:
        for gpus, steps in rows:
            run_id = f"g{gpus}-s{steps.lstrip('~')}"
            log = os.path.join(tmp, f"{run_id}.jsonl")
            if steps.startswith("~"):  # a generated log
                command = [py, "-c", GENERATE, log, steps[1:]]
                steps = "gen"
            else:
                command = [py, "-c", RUN, tmp, run_id, str(gpus), steps]
            run_wall, run_rss, out = measure(command, ROOT, a.timeout * 10)
            events = int(out.split()[-1])
            png = os.path.join(tmp, f"{run_id}.png")
            plot = [py, "-m", "offload_fsm", "plot", log, "-o", png]
            plot_wall, plot_rss, _ = measure(plot, ROOT, a.timeout)
            ratio = "-" if plot_wall is None or not run_wall else f"{plot_wall / run_wall:.2f}"
            line = f"{gpus:>5} {steps:>6} {events:>9,}  {fmt(run_wall, run_rss, a.timeout):>22}  "
            line += f"{fmt(plot_wall, plot_rss, a.timeout):>22}  {ratio:>8}"
            if old is not None:
                old_png = os.path.join(tmp, f"{run_id}-old.png")
                old_wall, old_rss, _ = measure(
                    [py, "-m", "offload_fsm", "plot", log, "-o", old_png], old, a.timeout
                )
                line += f"  {fmt(old_wall, old_rss, a.timeout):>22}"
            print(line, flush=True)
            for path in (log, png):
                if os.path.exists(path):
                    os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
