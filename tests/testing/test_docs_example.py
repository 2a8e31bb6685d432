"""docs/testing.md's example is examples/miles_pipeline's test file, and it passes (run in a
subprocess from the example's folder, as a user runs it: its own pytest settings)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "miles_pipeline"


def test_the_doc_shows_the_example_file_word_for_word() -> None:
    doc = (ROOT / "docs" / "testing.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert blocks, "docs/testing.md has no python example"
    assert blocks[0] == (EXAMPLE / "tests" / "test_pipeline.py").read_text()


def test_the_example_runs_and_catches_both_mistakes_on_both_backends() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS",)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v"],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    for backend in ("asyncio", "trio"):
        assert (
            f"test_a_step_wakes_the_trainer_once_through_the_gate[{backend}] PASSED" in done.stdout
        )
        for mistake in ("DoubleResume-double-resume", "SkippedGate-gate-skipped"):
            name = f"test_the_kit_catches_the_mistake[{backend}-{mistake}] PASSED"
            assert name in done.stdout, done.stdout
