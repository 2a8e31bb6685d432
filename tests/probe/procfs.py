"""Build fake ``/proc`` roots: one directory per pid with a ``stat`` file, and ``self/ns/pid``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

HOST_NS = "pid:[4026531836]"


def stat_line(pid: int, ppid: int, comm: str, state: str = "S") -> str:
    # Same layout as the kernel's: pid (comm) state ppid pgrp session tty ...
    return f"{pid} ({comm}) {state} {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0\n"


def make_proc(
    root: Path,
    procs: Iterable[tuple[int, int, str] | tuple[int, int, str, str]],
    *,
    namespace: str | None = HOST_NS,
) -> Path:
    """``procs``: (pid, ppid, comm[, state]). ``namespace`` None: no ``self/ns/pid`` link."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in procs:
        pid, ppid, comm = entry[0], entry[1], entry[2]
        state = entry[3] if len(entry) == 4 else "S"  # type: ignore[misc]
        d = root / str(pid)
        d.mkdir()
        (d / "stat").write_text(stat_line(pid, ppid, comm, state))
    (root / "uptime").write_text("1.0 1.0\n")  # non-pid entries are ignored
    if namespace is not None:
        (root / "self" / "ns").mkdir(parents=True)
        os.symlink(namespace, root / "self" / "ns" / "pid")  # dangling, as readlink wants
    return root


def engine_tree_procs(count: int) -> list[tuple[int, int, str]]:
    """``count`` processes: init, a launcher with a scheduler child per rank, and noise."""
    procs: list[tuple[int, int, str]] = [(1, 0, "systemd"), (100, 1, "python launch.py")]
    pid = 200
    while len(procs) < count:
        parent = 100 if len(procs) % 3 else 1
        procs.append((pid, parent, "sglang::scheduler" if parent == 100 else "bash"))
        pid += 1
    return procs
