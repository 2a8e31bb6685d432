"""Replay benchmark: throughput and peak memory of ``replay`` on generated dual-pipeline logs.

    python -m tests.bench.bench_replay [--quick] [--repeat N] [--sizes 100000,1000000]

For each size a deterministic synthetic run (offload_fsm/testing/synthetic.py) is written to a temp
file, then replayed in fresh child processes (so peak RSS is per size), next to the baseline
from the same run: reading and decoding every line with the codec and nothing else (the floor
any replay pays). Goal: 1,000,000 events in <= 5 s; peak RSS flat in log size (streaming).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 5.0


def _child(mode: str, log: str) -> None:
    from offload_fsm.events import codec
    from offload_fsm.replay import replay_path

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if mode == "replay":
        result = replay_path(log)
        events, ok = result.events, result.ok
    else:
        events, ok = 0, True
        decode = codec.decode
        with open(log, "rb") as f:
            for line in f:
                decode(line)
                events += 1
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"s": seconds, "events": events, "ok": ok, "rss0": before, "rss": peak}))


def _measure(mode: str, log: Path, repeat: int) -> dict[str, float]:
    runs = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-m", "tests.bench.bench_replay", "--child", mode, str(log)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        runs.append(json.loads(out))
    assert all(r["ok"] for r in runs), f"{mode}: the generated log has violations"
    best = min(runs, key=lambda r: r["s"])
    return {
        "s": best["s"],
        "events": best["events"],
        "rss_mib": max(r["rss"] for r in runs) / 1024,
        "rss0_mib": max(r["rss0"] for r in runs) / 1024,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_replay")
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each")
    parser.add_argument("--repeat", type=int, default=3, help="child runs per figure (best)")
    parser.add_argument("--sizes", default="100000,1000000", help="approximate event counts")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "LOG"), help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    from offload_fsm.testing.synthetic import SimConfig, write_sim_log

    sizes = [20_000, 100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    repeat = 1 if args.quick else args.repeat
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs; best of {repeat} fresh processes per figure"
    )
    header = (
        f"{'events':>10} {'log MiB':>8} {'gen s':>6} {'decode s':>9} {'replay s':>9} "
        f"{'replay/decode':>13} {'events/s':>10} {'RSS start':>10} {'RSS peak':>9}"
    )
    print(header)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_replay_") as tmp:
        for size in sizes:
            log = Path(tmp) / f"run_{size}.jsonl"
            t0 = time.perf_counter()
            # ~101 events per simulated step with these settings
            outcome = write_sim_log(log, SimConfig(steps=max(1, size // 101), co_tenant_p=0.3))
            gen_s = time.perf_counter() - t0
            dec = _measure("decode", log, repeat)
            rep = _measure("replay", log, repeat)
            assert rep["events"] == outcome.events
            rows.append(rep)
            print(
                f"{outcome.events:>10,} {log.stat().st_size / 2**20:>8.1f} {gen_s:>6.1f} "
                f"{dec['s']:>9.2f} {rep['s']:>9.2f} {rep['s'] / dec['s']:>13.2f} "
                f"{outcome.events / rep['s']:>10,.0f} {rep['rss0_mib']:>8.1f} M "
                f"{rep['rss_mib']:>7.1f} M",
                flush=True,
            )
            log.unlink()
    if len(rows) >= 2:
        small, big = rows[0], rows[-1]
        grow = (big["rss_mib"] - big["rss0_mib"]) - (small["rss_mib"] - small["rss0_mib"])
        print(
            f"peak RSS {small['rss_mib']:.1f} MiB at {small['events']:,} events vs "
            f"{big['rss_mib']:.1f} MiB at {big['events']:,} ({grow:+.1f} MiB for "
            f"{big['events'] / small['events']:.0f}x the events)"
        )
    biggest = rows[-1]
    per_million = biggest["s"] / biggest["events"] * 1e6
    print(f"replay: {per_million:.2f} s per 1M events (goal <= {GOAL_S:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
