"""A stand-in inference engine for the GPU checks and the real-GPU demo: a spawn parent and
the child that holds GPU memory (as SGLang's launcher and its ``sglang::scheduler``).

    python -m offload_fsm.sim.standin_proc parent [--host]

The parent spawns the child with the same stdin/stdout and waits for it. The child prints
``ready <pid>`` and then answers one line per command read from stdin:

    alloc GIB     allocate GIB GiB on the GPU (torch), synchronised  -> ok <seconds>
    free          del + torch.cuda.empty_cache()                      -> ok <seconds>
    tms_alloc GIB allocate inside a torch_memory_saver region         -> ok <seconds>
    pause/resume  torch_memory_saver.pause() / .resume()              -> ok <seconds>
    exit          leave                                               -> ok 0

A failure answers ``err <message>``. ``--host`` allocates host memory instead of GPU memory
(no torch): the CPU tests use it to check the process plumbing and the tree walk.

:class:`StandIn` drives it from a test.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]  # the folder offload_fsm is imported from
GIB = 1024**3


def _child(host: bool) -> int:
    torch: Any = None
    tms: Any = None
    if not host:
        torch = importlib.import_module("torch")
        torch.zeros(1, device="cuda")  # the CUDA context, as an idle engine has
        torch.cuda.synchronize()
    held: list[Any] = []
    print(f"ready {os.getpid()}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        start = time.perf_counter()
        try:
            op = words[0]
            if op == "exit":
                print("ok 0", flush=True)
                return 0
            if op in ("alloc", "tms_alloc"):
                nbytes = int(float(words[1]) * GIB)
                if host:
                    held.append(bytearray(nbytes))
                elif op == "alloc":
                    held.append(torch.empty(nbytes, dtype=torch.uint8, device="cuda"))
                else:
                    if tms is None:
                        tms = importlib.import_module("torch_memory_saver").torch_memory_saver
                    with tms.region():
                        held.append(torch.empty(nbytes, dtype=torch.uint8, device="cuda"))
            elif op == "free":
                held.clear()
                if not host:
                    torch.cuda.empty_cache()
            elif op in ("pause", "resume"):
                getattr(tms, op)()
            else:
                raise ValueError(f"unknown command {op!r}")
            if not host:
                torch.cuda.synchronize()
        except Exception as exc:
            print(f"err {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
            continue
        print(f"ok {time.perf_counter() - start:.6f}", flush=True)
    return 0


def _parent(host: bool) -> int:
    argv = [sys.executable, "-m", "offload_fsm.sim.standin_proc", "child"]
    if host:
        argv.append("--host")
    return subprocess.call(argv, cwd=REPO)  # same stdin/stdout: the test talks to the child


class StandIn:
    """The stand-in engine as a test sees it: the parent's pid, the child's, commands."""

    def __init__(self, *, host: bool = False, env: dict[str, str] | None = None) -> None:
        argv = [sys.executable, "-m", "offload_fsm.sim.standin_proc", "parent"]
        if host:
            argv.append("--host")
        merged = dict(os.environ if env is None else env)
        merged["PYTHONPATH"] = str(REPO) + os.pathsep + merged.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=merged,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: cleanup kills parent and child
        )
        self.parent_pid = self.proc.pid
        first = self._read(timeout=180)
        if not first.startswith("ready "):
            self.close()
            raise RuntimeError(f"stand-in engine did not start: {first!r}")
        self.child_pid = int(first.split()[1])

    def _read(self, timeout: float) -> str:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], timeout)
        if not ready:
            raise TimeoutError(f"stand-in engine said nothing for {timeout} s")
        line = out.readline()
        if not line:
            raise RuntimeError(f"stand-in engine exited (status {self.proc.poll()})")
        return line.strip()

    def command(self, text: str, timeout: float = 120.0) -> float:
        """Send a command; the seconds it took, once the call has returned in the engine."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        reply = self._read(timeout)
        if not reply.startswith("ok "):
            raise RuntimeError(f"stand-in engine: {text!r} -> {reply!r}")
        return float(reply.split()[1])

    def close(self) -> None:
        """Ask it to leave; if it does not, kill its process group (parent and child)."""
        graceful = False
        with contextlib.suppress(Exception):
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.command("exit", timeout=10)
                graceful = self.proc.wait(timeout=10) == 0
        if not graceful:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group we started
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def main(argv: list[str]) -> int:
    role = argv[0] if argv else ""
    host = "--host" in argv
    if role == "parent":
        return _parent(host)
    if role == "child":
        return _child(host)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
