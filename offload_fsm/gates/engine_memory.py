"""What an engine holds on its GPUs: its process tree, its resident bytes, attribution reports.

Plain functions over an :class:`Engine` and what they need (probe, recorder, ``/proc`` root,
PID namespace), so the orchestrator stays about lifecycle and gates.
"""

from __future__ import annotations

from collections.abc import Sequence

from offload_fsm.core.errors import ProbeError
from offload_fsm.engines.spec import Engine
from offload_fsm.events.bus import Recorder
from offload_fsm.events.kinds import AttributionReport
from offload_fsm.probe.attribution import Attribution, attribute, resident_by_gpu
from offload_fsm.probe.base import ProbeBackend, ProbeRound
from offload_fsm.probe.processes import ProcessTable
from offload_fsm.timing.deadlines import RoundDeadlines


def engine_pids(eng: Engine, proc_root: str, table: ProcessTable | None = None) -> frozenset[int]:
    """The engine's process tree: its spec's ``pids()`` or a walk of ``table`` (a fresh
    snapshot of ``proc_root`` when none) from its root; empty when the root is unknown."""
    if eng.spec.pids is not None:
        return eng.spec.pids()
    root = eng.spec.adapter.process_root
    if root is None:
        return frozenset()
    table = table or ProcessTable.snapshot(proc_root)
    info = table.get(root)
    known = info is not None and None not in (eng.root_start, info.start_ticks)
    if known and info is not None and info.start_ticks != eng.root_start:
        return frozenset()  # the engine's root died and its pid was recycled
    return table.tree(root)


async def resident_now(
    eng: Engine,
    *,
    probe: ProbeBackend,
    deadlines: RoundDeadlines,
    probe_timeout_s: float,
    proc_root: str,
    pid_namespace: str,
) -> int | None:
    """The engine's resident bytes now (max per GPU): a diagnostic, never fatal. The probe
    round's deadline is armed on ``deadlines`` (entered by the calling task)."""
    try:
        rnd = await deadlines.run(probe_timeout_s, probe.probe, eng.spec.devices)
    except (ProbeError, TimeoutError):
        return None
    by_gpu = resident_by_gpu(rnd, engine_pids(eng, proc_root), pid_namespace=pid_namespace)
    values = [v for v in by_gpu.values() if v is not None]
    return max(values) if values else None


async def report_attribution(
    eng: Engine,
    neighbours: Sequence[Engine],
    rnd: ProbeRound | None,
    context: str,
    *,
    recorder: Recorder,
    proc_root: str,
    pid_namespace: str,
) -> Attribution | None:
    """An attribution report for ``eng``'s GPUs (shared with ``neighbours``) as an event
    (and returned); None without a round."""
    if rnd is None:
        return None
    engines = (eng, *neighbours)
    # One /proc walk, and only when some engine is a real process tree (simulated
    # engines name their pids themselves: their fake pids mean nothing in /proc).
    real = any(e.spec.pids is None and e.spec.adapter.process_root for e in engines)
    table = ProcessTable.snapshot(proc_root) if real else None
    trees = {e.id: engine_pids(e, proc_root, table) for e in engines}
    report = attribute(rnd, trees, pid_namespace=pid_namespace, table=table)
    fields = report.to_event_fields(engine_id=eng.id)
    await recorder.emit(
        AttributionReport,
        engine_id=eng.id,
        pipeline_id=eng.spec.pipeline_id,
        gpus=tuple(m.device.key for m in rnd.memory),
        context=context,
        **fields,
    )
    return report


__all__ = ["engine_pids", "report_attribution", "resident_now"]
