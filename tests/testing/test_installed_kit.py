"""The testing kit as users get it: a wheel of offload-fsm installed into a fresh virtual
environment outside the source tree, and ``pytest`` run in a copy of examples/miles_pipeline
through the installed plugin, on asyncio and trio.

As cheap as it can be made, and still marked slow (~20-50 s here, most of it the wheel's
build): the wheel is built by pip in its isolated build environment (pyproject asks for
setuptools>=77, newer than the one a venv ships; pip takes it from its cache or the package
index) from a copy of the package without tests and docs, so nothing is written into the
source tree; the fresh venv is made without pip and the wheel installed into it by this
environment's pip (``--python``, ``--no-deps --no-index``: no resolver, no download). The
dependencies come from this environment through a ``.pth`` line naming its site-packages:
a plain path entry, so the editable install's own ``.pth`` hook there is not run and
``import offload_fsm`` finds only the wheel (the test checks where it came from).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "miles_pipeline"


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_example_project_passes_from_the_installed_wheel(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels)]
    shutil.copytree(
        ROOT,
        tmp_path / "src",
        ignore=shutil.ignore_patterns(
            ".venv*",
            ".git",
            "runs",
            "build",
            "*.egg-info",
            "__pycache__",
            ".mypy_cache",
            ".ruff_cache",
            ".pytest_cache",
            "examples",
            "tests",
            "docs",
        ),
    )
    _run([*build, str(tmp_path / "src")], cwd=tmp_path)
    (wheel,) = wheels.glob("offload_fsm-*.whl")

    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        cwd=tmp_path,
    )
    purelib = _run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp_path
    ).strip()
    (Path(purelib) / "zz_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    where = _run([str(py), "-c", "import offload_fsm; print(offload_fsm.__file__)"], project, env)
    assert Path(where.strip()).is_relative_to(Path(purelib)), where
    out = _run([str(py), "-m", "pytest", "-p", "no:cacheprovider", "-v"], project, env)
    for backend in ("asyncio", "trio"):
        assert f"test_a_step_wakes_the_trainer_once_through_the_gate[{backend}] PASSED" in out
        for mistake in ("DoubleResume-double-resume", "SkippedGate-gate-skipped"):
            assert f"test_the_kit_catches_the_mistake[{backend}-{mistake}] PASSED" in out, out
    assert " 6 passed" in out, out
