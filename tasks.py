#!/usr/bin/env python3
"""Project tasks that need nothing but Python 3.10+: each sets up its virtual environment itself.

    python3 tasks.py demo [ARGS...]        offload-fsm demo on the embedded simulator
    python3 tasks.py test [PYTEST ARGS]    lint, type check, docs check, the whole test suite,
                                           with the locked versions (requirements.lock.txt)
    python3 tasks.py test --lowest         the same with every direct dependency at its floor
    python3 tasks.py test --latest         the same with the newest versions pyproject allows
    python3 tasks.py lock                  re-resolve requirements.lock.txt (uv, newest allowed)
    python3 tasks.py fresh-clone           clone HEAD into a temporary folder and run the
                                           README's two commands there
    python3 tasks.py bench [NAMES]         every benchmark (python -m tests.bench)
    python3 tasks.py soak                  the long soak run (python -m tests.soak)

``.venv`` holds the locked set: it is (re)installed when pyproject.toml or the lock changed
since the last install, so CI installs exactly what the lock names, whatever day it runs.
uv lives in ``.venv-tools``. ``--lowest`` and ``--latest`` build ``.venv-lowest`` /
``.venv-latest`` anew each time with uv (lowest-direct / highest resolution) for the
interpreter that runs this script: run them as
``python3.10 tasks.py test --lowest`` and ``python3.13 tasks.py test --latest`` to cover the
supported range (docs/compatibility.md records what they installed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
LOCK = ROOT / "requirements.lock.txt"
# The resolver that writes the lock and builds the lowest/latest environments. Pinned so that a
# uv release cannot change what "lowest" means under us; bump it by hand.
UV = "uv==0.13.8"
EXTRAS = ".[test]"
LINT_PATHS = ("offload_fsm", "tests", "drivers")


def bin_dir(env: Path) -> Path:
    return env / ("Scripts" if os.name == "nt" else "bin")


def run(*argv: str | Path, cwd: Path = ROOT) -> None:
    code = subprocess.call([str(a) for a in argv], cwd=cwd)
    if code:
        raise SystemExit(code)


def check_python() -> None:
    if sys.version_info < (3, 10):
        raise SystemExit(f"offload_fsm needs Python 3.10+, this is {sys.version.split()[0]}")


def create_venv(env: Path) -> Path:
    py = bin_dir(env) / "python"
    if not py.exists():
        print(f"creating {env.name} with Python {sys.version.split()[0]}", flush=True)
        venv.EnvBuilder(with_pip=True).create(env)
    return py


def ensure_locked_venv() -> Path:
    """``.venv`` with the project and its test tools at the versions the lock names."""
    check_python()
    env = ROOT / ".venv"
    stamp = env / ".installed"
    digest = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + LOCK.read_bytes() + sys.version.encode()
    ).hexdigest()
    py = bin_dir(env) / "python"
    if stamp.exists() and stamp.read_text() == digest and py.exists():
        return py
    py = create_venv(env)
    print(f"installing offload-fsm with its test tools into {env.name} ({LOCK.name})", flush=True)
    run(py, "-m", "pip", "install", "-q", "-c", LOCK, "-e", EXTRAS)
    stamp.write_text(digest)
    return py


def uv() -> Path:
    """uv, in ``.venv-tools`` of its own: it resolves; the environments it builds are separate,
    and it needs no lock to exist (it writes the lock)."""
    check_python()
    env = ROOT / ".venv-tools"
    exe = bin_dir(env) / "uv"
    if exe.exists():
        version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
        if version.split()[1:2] == [UV.split("==")[1]]:
            return exe
    run(create_venv(env), "-m", "pip", "install", "-q", UV)
    return exe


def resolved_venv(resolution: str) -> Path:
    """A new ``.venv-<lowest|latest>`` resolved by uv, ignoring the lock."""
    check_python()
    name = {"lowest-direct": "lowest", "highest": "latest"}[resolution]
    env = ROOT / f".venv-{name}"
    shutil.rmtree(env, ignore_errors=True)
    py = create_venv(env)
    print(f"installing offload-fsm into {env.name} (uv, --resolution {resolution})", flush=True)
    resolver = uv()
    run(resolver, "pip", "install", "--python", py, "--resolution", resolution, "-e", EXTRAS)
    versions = subprocess.run(
        [resolver, "pip", "freeze", "--python", py], capture_output=True, text=True, check=True
    ).stdout
    (env / "versions.txt").write_text(versions)
    print(f"{env.name}: Python {sys.version.split()[0]}; versions in {env / 'versions.txt'}")
    return py


def check(py: Path, pytest_args: list[str]) -> None:
    """What CI runs: lint, format, types, generated docs, the whole suite."""
    run(py, "-m", "ruff", "check", *LINT_PATHS)
    run(py, "-m", "ruff", "format", "--check", *LINT_PATHS)
    run(py, "-m", "mypy")
    run(py, "-m", "offload_fsm.docgen", "--check")
    run(py, "-m", "pytest", "-q", *pytest_args)


def lock() -> None:
    run(
        uv(), "pip", "compile", "pyproject.toml", "--all-extras", "--universal",
        "--python-version", "3.10", "--upgrade", "--quiet",
        "--custom-compile-command", "python3 tasks.py lock", "-o", LOCK.name,
    )  # fmt: skip
    print(f"wrote {LOCK.name}: run python3 tasks.py test, then commit it")


def fresh_clone() -> None:
    """The README's two commands in a clone of HEAD, as a new user (and CI) would run them."""
    check_python()
    with tempfile.TemporaryDirectory(prefix="offload-fsm-clone-") as tmp:
        clone = Path(tmp) / "offload_fsm"
        run("git", "clone", "--quiet", "--no-hardlinks", ROOT, clone)
        print(f"fresh clone of HEAD in {clone}", flush=True)
        run(sys.executable, "tasks.py", "demo", "--steps", "2", cwd=clone)
        run(sys.executable, "tasks.py", "test", cwd=clone)
    print("fresh clone: both README commands passed")


def main(argv: list[str]) -> None:
    tasks = ("demo", "test", "lock", "fresh-clone", "bench", "soak")
    if not argv or argv[0] not in tasks:
        raise SystemExit(__doc__)
    task, rest = argv[0], argv[1:]
    if task == "test":
        modes = [a for a in rest if a in ("--lowest", "--latest")]
        rest = [a for a in rest if a not in modes]
        if len(modes) > 1:
            raise SystemExit("tasks.py test: --lowest and --latest exclude each other")
        if modes:
            py = resolved_venv("lowest-direct" if modes[0] == "--lowest" else "highest")
        else:
            py = ensure_locked_venv()
        check(py, rest)
    elif task == "lock":
        lock()
    elif task == "fresh-clone":
        fresh_clone()
    else:
        py = ensure_locked_venv()
        if task == "demo":
            run(bin_dir(py.parent.parent) / "offload-fsm", "demo", *rest)
        elif task == "bench":
            run(py, "-m", "tests.bench", *rest)
        else:
            run(py, "-m", "tests.soak", *rest)


if __name__ == "__main__":
    main(sys.argv[1:])
