"""A stand-in ``nvidia-smi`` on PATH for the MILES / RLix drop-in probes: each query answers
what the test scripted (output, exit status, a delay), and every call is logged."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

SCRIPT = """#!{python}
import json, os, sys, time
spec_path = os.environ["FAKE_SMI_SPEC"]
with open(spec_path) as f:
    spec = json.load(f)
args = sys.argv[1:]
with open(spec_path + ".calls", "a") as f:
    f.write(json.dumps(args) + "\\n")
query = next((a for a in args if a.startswith("--query")), "")
answer = spec.get(query, {{"rc": 2, "err": "Field \\"x\\" is not a valid field to query."}})
time.sleep(answer.get("sleep", 0))
sys.stdout.write(answer.get("out", ""))
sys.stderr.write(answer.get("err", ""))
sys.exit(answer.get("rc", 0))
"""


class FakeSmi:
    """Script answers with :meth:`answer`; read what was asked with :meth:`calls`."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        exe = self.bin / "nvidia-smi"
        exe.write_text(SCRIPT.format(python=sys.executable))
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
        self.spec_path = root / "spec.json"
        self.spec: dict[str, dict[str, object]] = {}
        self._save()

    def _save(self) -> None:
        self.spec_path.write_text(json.dumps(self.spec))

    def answer(
        self, query: str, out: str = "", *, rc: int = 0, err: str = "", sleep: float = 0
    ) -> None:
        self.spec[query] = {"out": out, "rc": rc, "err": err, "sleep": sleep}
        self._save()

    def calls(self) -> list[list[str]]:
        log = Path(str(self.spec_path) + ".calls")
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSmi:
    fake = FakeSmi(tmp_path)
    monkeypatch.setenv("PATH", f"{fake.bin}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_SMI_SPEC", str(fake.spec_path))
    return fake


@pytest.fixture
def no_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH on which there is no nvidia-smi at all."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
