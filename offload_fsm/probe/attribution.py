"""Process-tree attribution (minimal version; the probes branch replaces this module)."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from offload_fsm.probe.base import ProbeRound


def resident_by_gpu(round: ProbeRound, pids: AbstractSet[int]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for mem in round.memory:
        key = mem.device.key
        if not round.per_gpu_processes:
            out[key] = None
            continue
        mine = [p for p in round.processes if p.device.key == key and p.pid in pids]
        if not mine or any(p.used_bytes is None for p in mine):
            out[key] = None
        else:
            out[key] = sum(p.used_bytes or 0 for p in mine)
    return out


def resident_max(round: ProbeRound, pids: AbstractSet[int]) -> int | None:
    values = [v for v in resident_by_gpu(round, pids).values() if v is not None]
    return max(values) if values else None


@dataclass(frozen=True, slots=True)
class Attribution:
    fields: dict[str, Any]

    def to_event_fields(self) -> dict[str, Any]:
        return dict(self.fields)

    def render(self) -> str:
        return repr(self.fields)


def attribute(
    round: ProbeRound, trees: Mapping[str, AbstractSet[int]], *, pid_namespace: str = "host"
) -> Attribution:
    from offload_fsm.events import ProcessEntry

    used = tuple(m.used_bytes for m in round.memory)
    entries = []
    for p in round.processes:
        owner = next((eid for eid, pids in trees.items() if p.pid in pids), "foreign")
        entries.append(
            ProcessEntry(gpu=p.device.key, pid=p.pid, used_bytes=p.used_bytes, owner=owner)
        )
    gap = tuple(
        None
        if m.used_bytes is None
        else m.used_bytes - sum(e.used_bytes or 0 for e in entries if e.gpu == m.device.key)
        for m in round.memory
    )
    return Attribution(
        {
            "used_bytes": used,
            "engine_resident_bytes": tuple(None for _ in used),
            "unattributed_bytes": gap,
            "processes": tuple(entries),
            "pid_namespace": pid_namespace,
        }
    )


class ProcessTable:
    """pid -> ppid from one walk of /proc (minimal version)."""

    def __init__(self, parents: dict[int, int]) -> None:
        self.parents = parents

    @classmethod
    def snapshot(cls, proc_root: str = "/proc") -> ProcessTable:
        import os

        parents: dict[int, int] = {}
        for name in os.listdir(proc_root):
            if not name.isdigit():
                continue
            try:
                with open(f"{proc_root}/{name}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            rest = data[data.rfind(b")") + 2 :].split()
            parents[int(name)] = int(rest[1])
        return cls(parents)

    def tree(self, root: int) -> frozenset[int]:
        if root not in self.parents:
            return frozenset()
        children: dict[int, list[int]] = {}
        for pid, ppid in self.parents.items():
            children.setdefault(ppid, []).append(pid)
        out, stack = {root}, [root]
        while stack:
            for c in children.get(stack.pop(), []):
                if c not in out:
                    out.add(c)
                    stack.append(c)
        return frozenset(out)
