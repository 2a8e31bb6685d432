#!/usr/bin/env python3
"""Project tasks that need nothing but Python 3.10+: each sets up ``.venv`` itself.

    python3 tasks.py demo [ARGS...]   offload-fsm demo on the embedded simulator
    python3 tasks.py test             lint, type check, the whole test suite
    python3 tasks.py bench [NAMES]    every benchmark (python -m tests.bench)
    python3 tasks.py soak             the long soak run (python -m tests.soak)

``.venv`` is (re)installed when pyproject.toml changed since the last install.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".installed"


def run(*argv: str | Path) -> None:
    code = subprocess.call([str(a) for a in argv], cwd=ROOT)
    if code:
        raise SystemExit(code)


def ensure_venv() -> None:
    if sys.version_info < (3, 10):
        raise SystemExit(f"offload_fsm needs Python 3.10+, this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest and PY.exists():
        return
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing offload-fsm with its test tools into .venv", flush=True)
    run(PY, "-m", "pip", "install", "-q", "--upgrade", "pip")
    run(PY, "-m", "pip", "install", "-q", "-e", ".[test]")
    STAMP.write_text(digest)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("demo", "test", "bench", "soak"):
        raise SystemExit(__doc__)
    task, rest = argv[0], argv[1:]
    ensure_venv()
    if task == "demo":
        run(BIN / "offload-fsm", "demo", *rest)
    elif task == "test":
        paths = ["offload_fsm", "tests", "drivers"]
        run(PY, "-m", "ruff", "check", *paths)
        run(PY, "-m", "ruff", "format", "--check", *paths)
        run(PY, "-m", "mypy")
        run(PY, "-m", "offload_fsm.docgen", "--check")
        run(PY, "-m", "pytest", "-q", *rest)
    elif task == "bench":
        run(PY, "-m", "tests.bench", *rest)
    else:
        run(PY, "-m", "tests.soak", *rest)


if __name__ == "__main__":
    main(sys.argv[1:])
