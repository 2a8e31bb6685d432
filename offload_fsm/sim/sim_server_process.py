"""Start and stop the simulated server (:mod:`.sim_server`) as a real process tree.

For tests and demos: :meth:`SimServerProcess.start` runs ``python -m
offload_fsm.sim.sim_server`` and waits for its ready line; ``stop()`` and ``kill()`` end
the launcher and its scheduler child.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from offload_fsm.core.errors import EngineError
from offload_fsm.sim.sim_model import FaultPlan, Footprint


class SimServerProcess:
    """Start and stop the simulated server as a real process tree (tests, demos).

    ``stop()`` ends the whole tree (launcher and child), gracefully then by SIGKILL.
    """

    def __init__(self, popen: subprocess.Popen[bytes], info: dict[str, Any]) -> None:
        self._popen = popen
        self.url: str = info["url"]
        self.port: int = info["port"]
        self.pid: int = info["pid"]
        self.scheduler_pid: int = info["scheduler_pid"]

    @classmethod
    def start(
        cls,
        ledger_dir: str | os.PathLike[str],
        gpu_keys: Sequence[str],
        footprint: Footprint,
        *,
        faults: FaultPlan | None = None,
        require_pause: bool = True,
        startup_timeout_s: float = 60.0,
    ) -> SimServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "offload_fsm.sim.sim_server",
            "--ledger-dir",
            os.fspath(ledger_dir),
            "--footprint",
            json.dumps(footprint.to_json()),
            "--faults",
            json.dumps((faults or FaultPlan()).to_json()),
        ]
        for key in gpu_keys:
            cmd += ["--gpu", key]
        if not require_pause:
            cmd.append("--no-require-pause")
        # The package may be used from a source tree (not installed): put it on the path.
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
        assert popen.stdout is not None
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(popen.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + startup_timeout_s
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    break
                chunk = os.read(popen.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
        try:
            info = json.loads(line)
        except ValueError:
            _kill_tree(popen.pid)
            popen.wait(timeout=10)
            raise EngineError(
                "sim-server",
                "start",
                f"no ready line in {startup_timeout_s:g} s (rc={popen.poll()}, got {line!r:.200})",
            ) from None
        return cls(popen, info)

    def alive(self) -> bool:
        return self._popen.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the launcher and its child: SIGTERM (clean), then SIGKILL what is left."""
        tree = _tree(self.pid)
        if self._popen.poll() is None:
            self._popen.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=timeout_s)
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        _wait_gone(tree, timeout_s)
        if self._popen.poll() is None:
            self._popen.kill()
        self._popen.wait(timeout=timeout_s)
        if self._popen.stdout is not None:
            self._popen.stdout.close()

    def kill(self) -> None:
        """SIGKILL the whole tree at once (no cleanup), like an OOM kill."""
        _kill_tree(self.pid)
        self._popen.wait(timeout=10)
        if self._popen.stdout is not None:
            self._popen.stdout.close()

    def __enter__(self) -> SimServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE  # dead; its reaper may be slow
    except psutil.Error:
        return True


def _wait_gone(procs: Sequence[psutil.Process], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(_gone(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.005)


def _kill_tree(pid: int) -> None:
    tree = _tree(pid)
    for proc in reversed(tree):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _wait_gone(tree, 10.0)
