"""The three gate conditions (one mechanism in :mod:`offload_fsm.gates.gate`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from offload_fsm.gates.gate import Verdict
from offload_fsm.probe.attribution import resident_by_gpu
from offload_fsm.probe.base import GIB, GpuDevice, ProbeRound


@functools.lru_cache(maxsize=4096)
def gib(nbytes: int | None) -> str:
    # Cached: every gate decision's detail formats its threshold and readings, which repeat
    # from round to round.
    return "unknown" if nbytes is None else f"{nbytes / GIB:.2f} GiB"


def _engine_resident(
    round: ProbeRound, devices: Sequence[GpuDevice], pids: AbstractSet[int], pid_namespace: str
) -> tuple[tuple[int | None, ...], int | None]:
    """The engine's process-tree residual on each of ``devices`` (None: not measured there),
    and the largest one measured (None when no process of the tree is visible on any)."""
    by_gpu = resident_by_gpu(round, pids, pid_namespace=pid_namespace)
    observed = tuple(by_gpu.get(d.key) for d in devices)
    known = [b for b in observed if b is not None]
    return observed, max(known) if known else None


@dataclass(slots=True)
class WakeCondition:
    """Whole-GPU used memory (every process) <= threshold on each GPU the engine needs.

    Optionally: free >= ``need_free_bytes`` on each, and no conflicting engine awake there
    (``blockers()`` names them; the topology check that memory alone cannot make).
    """

    devices: Sequence[GpuDevice]
    threshold_bytes: int
    need_free_bytes: int | None = None
    blockers: Callable[[], list[str]] | None = None
    gate: str = "wake"

    def evaluate(self, round: ProbeRound) -> Verdict:
        mems = [round.memory_of(d) for d in self.devices]
        used = tuple(m.used_bytes for m in mems)
        if any(u is None for u in used):
            unknown = [d.label() for d, u in zip(self.devices, used) if u is None]
            return Verdict(None, used, self.threshold_bytes, f"used memory unknown on {unknown}")
        worst = max(u for u in used if u is not None)
        worst_dev = self.devices[used.index(worst)].label()
        ok = worst <= self.threshold_bytes
        detail = f"max used {gib(worst)} on {worst_dev} vs threshold {gib(self.threshold_bytes)}"
        if ok and self.need_free_bytes is not None:
            frees = [m.free_bytes for m in mems]
            short = [
                d.label()
                for d, f in zip(self.devices, frees)
                if f is None or f < self.need_free_bytes
            ]
            if short:
                ok = False
                detail += f"; free < {gib(self.need_free_bytes)} needed on {short}"
        # ``passed`` is the memory rule alone: it may settle while a blocker finishes its
        # release; the gate opens only once nothing blocks (Verdict.blocked).
        blocking = self.blockers() if self.blockers is not None else []
        if blocking:
            detail += f"; waiting for {', '.join(blocking)}"
        return Verdict(ok, used, self.threshold_bytes, detail, blocked=bool(blocking))


@dataclass(slots=True)
class ReleaseCondition:
    """The engine's own process-tree residual (per GPU, max across GPUs) <= its limit.

    ``unmeasured`` decides when no PID of the tree is visible on any GPU: "pass" (default:
    the whole-GPU wake gate still protects every wake; the event says "unmeasured") or
    "fail" (closed: the release gate times out).
    """

    devices: Sequence[GpuDevice]
    pids: Callable[[], AbstractSet[int]]
    limit_bytes: int
    unmeasured: str = "pass"
    pid_namespace: str = "host"
    gate: str = "release"

    def evaluate(self, round: ProbeRound) -> Verdict:
        observed, worst = _engine_resident(round, self.devices, self.pids(), self.pid_namespace)
        if worst is None:
            return Verdict(
                self.unmeasured == "pass",
                observed,
                self.limit_bytes,
                f"unmeasured: no process of the engine visible on its GPUs "
                f"(policy: {self.unmeasured})",
            )
        return Verdict(
            worst <= self.limit_bytes,
            observed,
            self.limit_bytes,
            f"engine resident {gib(worst)} vs limit {gib(self.limit_bytes)}",
        )


@dataclass(slots=True)
class ResumeCondition:
    """The resume really happened: resident memory rose to >= ``fraction`` of what the
    engine held before its release (catches a resume call that silently did nothing)."""

    devices: Sequence[GpuDevice]
    pids: Callable[[], AbstractSet[int]]
    before_bytes: int
    fraction: float
    unmeasured: str = "pass"
    pid_namespace: str = "host"
    gate: str = "resume"

    def evaluate(self, round: ProbeRound) -> Verdict:
        observed, got = _engine_resident(round, self.devices, self.pids(), self.pid_namespace)
        need = int(self.before_bytes * self.fraction)
        if got is None:
            return Verdict(
                self.unmeasured == "pass",
                observed,
                need,
                f"unmeasured: no process of the engine visible (policy: {self.unmeasured})",
            )
        return Verdict(
            got >= need,
            observed,
            need,
            f"engine resident {gib(got)} vs >= {gib(need)} "
            f"({self.fraction:.0%} of {gib(self.before_bytes)} before release)",
        )
