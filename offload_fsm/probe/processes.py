"""The machine's processes as ``/proc`` shows them: one snapshot of the process table, the
trees it answers, and which PID namespace this process lives in.

An engine is known by its root pid (the spawn parent); its GPU memory lives in descendants
such as ``sglang::scheduler``. :class:`ProcessTable` reads ``/proc`` once (one ``stat`` file
per process: a psutil recursive walk per engine costs ~2 ms *each*) and answers any number
of tree queries from that one snapshot. :mod:`offload_fsm.probe.attribution` uses them to say
whose memory a probe round saw.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# The kernel's fixed inode of the initial (host) PID namespace: PROC_PID_INIT_INO.
HOST_PID_NAMESPACE = "pid:[4026531836]"
PID_NAMESPACES = ("host", "foreign", "unknown")
FOREIGN = "foreign"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ProcInfo:
    pid: int
    ppid: int
    comm: str
    state: str  # "R", "S", "Z" (zombie), ...
    # Clock ticks after boot when the process started (stat field 22): with the pid it names
    # one process for good, so a recycled pid is told apart. None where not readable.
    start_ticks: int | None = None


class ProcessTable:
    """One snapshot of the process table: pid -> parent pid (plus comm and state)."""

    __slots__ = ("_children", "available", "proc_root", "procs")

    def __init__(
        self, procs: Mapping[int, ProcInfo], *, proc_root: str = "/proc", available: bool = True
    ) -> None:
        self.procs: Mapping[int, ProcInfo] = procs
        self.proc_root = proc_root
        self.available = available  # False: the proc root could not be read at all
        self._children: dict[int, list[int]] | None = None

    @classmethod
    def snapshot(cls, proc_root: str | os.PathLike[str] = "/proc") -> ProcessTable:
        """Walk ``proc_root`` once. Processes that vanish mid-walk and unreadable or
        garbled ``stat`` files are skipped; a missing proc root gives an empty table with
        ``available`` False."""
        root = os.fspath(proc_root)
        try:
            # Open each stat file relative to the root's descriptor: no path walk per pid.
            root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return cls({}, proc_root=root, available=False)
        procs: dict[int, ProcInfo] = {}
        try:
            for name in os.listdir(root_fd):
                if not (name.isascii() and name.isdigit()):
                    continue
                try:
                    fd = os.open(name + "/stat", os.O_RDONLY, dir_fd=root_fd)
                except OSError:
                    continue  # vanished (or not a process directory)
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                finally:
                    os.close(fd)
                info = parse_stat(int(name), data)
                if info is not None:
                    procs[info.pid] = info
        finally:
            os.close(root_fd)
        return cls(procs, proc_root=root)

    def __len__(self) -> int:
        return len(self.procs)

    def __contains__(self, pid: object) -> bool:
        return pid in self.procs

    def get(self, pid: int) -> ProcInfo | None:
        return self.procs.get(pid)

    def children(self, pid: int) -> tuple[int, ...]:
        if self._children is None:
            kids: dict[int, list[int]] = {}
            for info in self.procs.values():
                if info.ppid != info.pid:
                    kids.setdefault(info.ppid, []).append(info.pid)
            self._children = kids
        return tuple(self._children.get(pid, ()))

    def tree(self, root_pid: int) -> frozenset[int]:
        """``root_pid`` and all its descendants; empty when the root is gone."""
        if root_pid not in self.procs:
            return frozenset()
        seen = {root_pid}
        stack = [root_pid]
        while stack:
            for child in self.children(stack.pop()):
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return frozenset(seen)


def parse_stat(pid: int, data: bytes) -> ProcInfo | None:
    """Parse ``/proc/PID/stat``. ``comm`` may hold spaces and parentheses, so the fields
    after it are found from the *last* ``)``. Garbled content gives None."""
    open_at = data.find(b"(")
    close_at = data.rfind(b")")
    if open_at < 0 or close_at < open_at:
        return None
    rest = data[close_at + 2 :].split(b" ", 20)
    if len(rest) < 2:
        return None
    try:
        ppid = int(rest[1])
    except ValueError:
        return None
    start: int | None = None
    if len(rest) > 19 and rest[19].strip().isdigit():  # field 22 (starttime)
        start = int(rest[19])
    comm = data[open_at + 1 : close_at].decode("utf-8", "replace")
    state = rest[0].decode("ascii", "replace")
    return ProcInfo(pid=pid, ppid=ppid, comm=comm, state=state, start_ticks=start)


def read_process(proc_root: str | os.PathLike[str], pid: int) -> ProcInfo | None:
    """One process's ``stat`` (None when it is gone or unreadable)."""
    try:
        with open(os.path.join(os.fspath(proc_root), str(pid), "stat"), "rb") as f:
            return parse_stat(pid, f.read(4096))
    except OSError:
        return None


def detect_pid_namespace(proc_root: str | os.PathLike[str] = "/proc") -> str:
    """``"host"`` when this process lives in the host's PID namespace (NVML's PIDs are
    ours), ``"foreign"`` in a container's own namespace, ``"unknown"`` if unreadable."""
    try:
        link = os.readlink(os.path.join(os.fspath(proc_root), "self", "ns", "pid"))
    except OSError:
        return UNKNOWN
    if not link.startswith("pid:["):
        return UNKNOWN
    return "host" if link == HOST_PID_NAMESPACE else FOREIGN
