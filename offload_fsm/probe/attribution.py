"""Who holds the memory: per-GPU attribution of a probe round to engines' process trees
(the trees come from :mod:`offload_fsm.probe.processes`).

Residual of a tree on a GPU is the sum of its processes' usage there; across GPUs take the
max, never the sum (a TP=2 engine holds memory on two cards). A tree with no pid in a GPU's
process list is *unknown* (None), never 0: in a container with its own PID namespace NVML
lists host PIDs that no tree contains, so per-process figures are then unknown while
whole-device figures stay valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from offload_fsm.core.errors import ConfigError
from offload_fsm.events.kinds import ProcessEntry
from offload_fsm.probe.base import GIB, MIB, DeviceMemory, GpuDevice, ProbeRound
from offload_fsm.probe.processes import FOREIGN, PID_NAMESPACES, UNKNOWN, ProcessTable


def _check_namespace(pid_namespace: str) -> None:
    if pid_namespace not in PID_NAMESPACES:
        raise ConfigError("pid_namespace", pid_namespace, " | ".join(PID_NAMESPACES))


def resident_by_gpu(
    round: ProbeRound, pids: AbstractSet[int], *, pid_namespace: str = "host"
) -> dict[str, int | None]:
    """Device key -> the sum of ``pids``' usage on that GPU.

    None (unknown, never 0) when no pid of the set is listed there, when any of their
    usages is unknown, when the GPU's process list is unknown (``per_gpu_processes`` False
    or the driver refused it), or when ``pid_namespace`` is not ``"host"``.
    """
    _check_namespace(pid_namespace)
    if pid_namespace != "host" or not round.per_gpu_processes:
        return {mem.device.key: None for mem in round.memory}
    # One pass over the round's processes (every gate round asks this): a key is absent
    # where no pid of the set is listed, and None once any usage of theirs is unknown.
    sums: dict[str, int | None] = {}
    for proc in round.processes:
        if proc.pid in pids:
            key = proc.device.key
            used = proc.used_bytes
            if key in sums:
                before = sums[key]
                sums[key] = None if before is None or used is None else before + used
            else:
                sums[key] = used
    unknown = round.unknown_processes
    return {
        mem.device.key: None if mem.device.key in unknown else sums.get(mem.device.key)
        for mem in round.memory
    }


def resident_max(
    round: ProbeRound, pids: AbstractSet[int], *, pid_namespace: str = "host"
) -> int | None:
    """Max of :func:`resident_by_gpu` across the round's GPUs (never the sum).

    None when *any* GPU of the round is unknown (fail closed: pass only the engine's own
    GPUs, where its processes hold at least a CUDA context) or the round has no GPUs.
    """
    values = list(resident_by_gpu(round, pids, pid_namespace=pid_namespace).values())
    if not values or any(v is None for v in values):
        return None
    return max(v for v in values if v is not None)


def format_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    if abs(n) >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / MIB:.0f} MiB"


@dataclass(frozen=True, slots=True)
class AttributedProcess:
    pid: int
    used_bytes: int | None
    owner: str  # an engine id, "foreign" or "unknown"
    comm: str | None = None  # the process name where the process table knew it


@dataclass(frozen=True, slots=True)
class GpuAttribution:
    memory: DeviceMemory
    processes: tuple[AttributedProcess, ...]
    processes_known: bool  # False: the list is missing; per-process figures are unknown
    listed_bytes: int | None  # sum over every listed process (None if any is unknown)
    unattributed_bytes: int | None  # whole-device used minus listed_bytes
    engine_resident: tuple[tuple[str, int | None], ...]  # (engine id, resident) pairs

    @property
    def device(self) -> GpuDevice:
        return self.memory.device


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who holds the memory on the GPUs of one round."""

    backend: str
    sampled_at: float
    pid_namespace: str
    per_gpu_processes: bool
    engines: tuple[str, ...]
    gpus: tuple[GpuAttribution, ...]
    unplaced: tuple[AttributedProcess, ...] = ()  # legacy nvidia-smi: GPU not known
    notes: tuple[str, ...] = field(default=())

    @property
    def gpu_keys(self) -> tuple[str, ...]:
        """Device keys, aligned with every per-GPU tuple (the event's ``gpus``)."""
        return tuple(g.device.key for g in self.gpus)

    def resident(self, engine_id: str) -> tuple[int | None, ...]:
        if engine_id not in self.engines:
            raise ConfigError("engine_id", engine_id, "one of " + ", ".join(self.engines))
        return tuple(dict(g.engine_resident)[engine_id] for g in self.gpus)

    def resident_max(self, engine_id: str) -> int | None:
        """Max across GPUs; None if any GPU is unknown (as :func:`resident_max`)."""
        values = self.resident(engine_id)
        if not values or any(v is None for v in values):
            return None
        return max(v for v in values if v is not None)

    def to_event_fields(self, engine_id: str | None = None) -> dict[str, Any]:
        """Keyword arguments for :class:`offload_fsm.events.kinds.AttributionReport` (pass
        ``gpus=attribution.gpu_keys`` alongside). ``engine_id`` picks whose resident bytes
        go in ``engine_resident_bytes``; left out, that is the only engine's, or unknown
        (None per GPU) when there are several."""
        if engine_id is None and len(self.engines) == 1:
            engine_id = self.engines[0]
        resident = self.resident(engine_id) if engine_id is not None else (None,) * len(self.gpus)
        entries = [
            ProcessEntry(gpu=g.device.key, pid=p.pid, used_bytes=p.used_bytes, owner=p.owner)
            for g in self.gpus
            for p in g.processes
        ]
        entries += [
            ProcessEntry(gpu="", pid=p.pid, used_bytes=p.used_bytes, owner=p.owner)
            for p in self.unplaced
        ]
        return {
            "used_bytes": tuple(g.memory.used_bytes for g in self.gpus),
            "engine_resident_bytes": resident,
            "unattributed_bytes": tuple(g.unattributed_bytes for g in self.gpus),
            "processes": tuple(entries),
            "pid_namespace": self.pid_namespace,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""

        def proc(p: AttributedProcess) -> dict[str, Any]:
            return {"pid": p.pid, "used_bytes": p.used_bytes, "owner": p.owner, "comm": p.comm}

        return {
            "backend": self.backend,
            "sampled_at": self.sampled_at,
            "pid_namespace": self.pid_namespace,
            "per_gpu_processes": self.per_gpu_processes,
            "engines": list(self.engines),
            "notes": list(self.notes),
            "gpus": [
                {
                    "key": g.device.key,
                    "index": g.device.index,
                    "uuid": g.device.uuid,
                    "bus_id": g.device.bus_id,
                    "name": g.device.name,
                    "node": g.device.node,
                    "total_bytes": g.memory.total_bytes,
                    "used_bytes": g.memory.used_bytes,
                    "free_bytes": g.memory.free_bytes,
                    "reserved_bytes": g.memory.reserved_bytes,
                    "semantics": g.memory.semantics,
                    "processes_known": g.processes_known,
                    "unattributed_bytes": g.unattributed_bytes,
                    "engine_resident_bytes": dict(g.engine_resident),
                    "processes": [proc(p) for p in g.processes],
                }
                for g in self.gpus
            ],
            "unplaced": [proc(p) for p in self.unplaced],
        }

    def render(self) -> str:
        """A readable table: per GPU its memory, then its processes with owners."""
        lines = [f"backend {self.backend}, PID namespace {self.pid_namespace}"]
        for g in self.gpus:
            m, d = g.memory, g.device
            lines.append(
                f"{d.label()}  {d.uuid}  {d.bus_id}  {d.name}".rstrip()
                + f"\n  used {format_bytes(m.used_bytes)}"
                f"  reserved {format_bytes(m.reserved_bytes)}"
                f"  free {format_bytes(m.free_bytes)}"
                f"  total {format_bytes(m.total_bytes)}"
                + (f"  ({m.semantics} semantics)" if m.semantics != "v2" else "")
            )
            if not g.processes_known:
                lines.append("  processes: unknown (the driver would not list them)")
            elif not g.processes:
                lines.append("  processes: none")
            else:
                lines.append(f"  {'pid':>8}  {'used':>12}  owner")
                for p in g.processes:
                    name = f"  ({p.comm})" if p.comm else ""
                    lines.append(f"  {p.pid:>8}  {format_bytes(p.used_bytes):>12}  {p.owner}{name}")
            lines.append(f"  unattributed {format_bytes(g.unattributed_bytes)}")
            for engine, resident in g.engine_resident:
                lines.append(f"  engine {engine}: resident {format_bytes(resident)}")
        if self.unplaced:
            lines.append("processes on unknown GPUs (legacy nvidia-smi query, summed):")
            for p in self.unplaced:
                lines.append(f"  {p.pid:>8}  {format_bytes(p.used_bytes):>12}  {p.owner}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _owner(pid: int, trees: Mapping[str, AbstractSet[int]], pid_namespace: str) -> str:
    if pid_namespace != "host":
        return UNKNOWN
    # The smallest tree holding the pid is the most specific owner (nested roots).
    best: tuple[int, str] | None = None
    for engine, tree in trees.items():
        if pid in tree and (best is None or len(tree) < best[0]):
            best = (len(tree), engine)
    return best[1] if best else FOREIGN


def attribute(
    round: ProbeRound,
    trees: Mapping[str, AbstractSet[int]],
    *,
    pid_namespace: str = "host",
    table: ProcessTable | None = None,
) -> Attribution:
    """Attribute every process of ``round`` to an engine tree, ``"foreign"`` (co-tenant or
    orphan) or ``"unknown"`` (foreign/unknown PID namespace, or no readable proc table).

    ``trees`` maps engine id -> pids (``table.tree(root)``). ``table``, if given, names
    processes and says whether ``/proc`` was readable at all. Pass ``pid_namespace`` from
    :func:`detect_pid_namespace` (or the fake ledger's ``pid_namespace``); the ``"host"``
    default only keeps older callers working.
    """
    _check_namespace(pid_namespace)
    available = table.available if table is not None else True
    ns = pid_namespace if available else UNKNOWN

    def comm(pid: int) -> str | None:
        info = table.get(pid) if table is not None and ns == "host" else None
        return info.comm if info is not None else None

    residents = {e: resident_by_gpu(round, t, pid_namespace=ns) for e, t in trees.items()}
    gpus = []
    for mem in round.memory:
        dev = mem.device
        known = round.processes_known(dev)
        procs = tuple(
            AttributedProcess(p.pid, p.used_bytes, _owner(p.pid, trees, ns), comm(p.pid))
            for p in round.processes_on(dev)
        )
        usages = [p.used_bytes for p in procs]
        listed = (
            sum(b for b in usages if b is not None)
            if known and all(b is not None for b in usages)
            else None
        )
        gap = None if listed is None or mem.used_bytes is None else mem.used_bytes - listed
        gpus.append(
            GpuAttribution(
                memory=mem,
                processes=procs,
                processes_known=known,
                listed_bytes=listed,
                unattributed_bytes=gap,
                engine_resident=tuple((e, residents[e][dev.key]) for e in trees),
            )
        )
    unplaced = tuple(
        AttributedProcess(u.pid, u.used_bytes, _owner(u.pid, trees, ns), comm(u.pid))
        for u in round.unplaced
    )
    notes = list(round.notes)
    if not available:
        notes.append(f"process table {table.proc_root if table else ''} was not readable")
    if ns != "host":
        notes.append(
            f"PID namespace is {ns}: per-process figures cannot be attributed "
            "(whole-device figures are valid)"
        )
    return Attribution(
        backend=round.backend,
        sampled_at=round.sampled_at,
        pid_namespace=ns,
        per_gpu_processes=round.per_gpu_processes,
        engines=tuple(trees),
        gpus=tuple(gpus),
        unplaced=unplaced,
        notes=tuple(notes),
    )
