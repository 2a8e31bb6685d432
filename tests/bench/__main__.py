"""Run every ``bench_*.py`` module in this folder: ``python -m tests.bench [NAME ...]``.

Each module runs with its defaults in its own process (``python -m tests.bench.bench_X``):
the modules take different options, and a fresh interpreter keeps one benchmark's memory,
event loops or Ray session out of the next one's figures. Names select modules
(``core`` or ``bench_core``); the exit status is non-zero if any module failed.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path


def discover() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))


def main(argv: list[str]) -> int:
    names = discover()
    if argv:
        wanted = [a if a.startswith("bench_") else f"bench_{a}" for a in argv]
        unknown = [w for w in wanted if w not in names]
        if unknown:
            print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(names)}")
            return 2
        names = wanted
    failed = []
    for name in names:
        print(f"=== tests.bench.{name} ===", flush=True)
        code = subprocess.call([sys.executable, "-m", f"tests.bench.{name}"])
        if code:
            failed.append(f"{name} (exit {code})")
        print(flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
