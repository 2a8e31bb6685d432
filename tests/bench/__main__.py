"""Run every ``bench_*.py`` module in this folder: ``python -m tests.bench [args]``.

Each module has ``main(argv) -> int``; the arguments are passed to every one.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    names = sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_")
    )
    status = 0
    for name in names:
        print(f"=== tests.bench.{name} ===", flush=True)
        module = importlib.import_module(f"tests.bench.{name}")
        status = max(status, int(module.main(argv)))
        print(flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
