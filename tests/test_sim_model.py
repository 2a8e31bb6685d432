"""MemoryModel.bytes_at: its cached span must never hide a step (late release, resume, death)."""

from __future__ import annotations

from offload_fsm.probe.base import GIB
from offload_fsm.sim.sim_model import Fault, FaultKind, Footprint, MemoryModel

FOOT = Footprint(weights=10 * GIB, kv_cache=20 * GIB, cuda_graph=2 * GIB, context=GIB // 2)
FULL = FOOT.context + 32 * GIB


def uncached(model: MemoryModel, now: float) -> int:
    model._span = None
    return model.bytes_at(now)


def test_cached_reads_follow_every_step_in_either_direction() -> None:
    model = MemoryModel(FOOT, 0.0, require_pause=False)
    assert model.bytes_at(1.0) == FULL  # fills the cache over [0, inf)
    model.release(None, 2.0, Fault(FaultKind.LATE_RELEASE, delay_s=0.5))  # drops at 2.5
    readings = {t: model.bytes_at(t) for t in (2.0, 2.4, 2.5, 3.0, 2.2, 0.5)}
    assert readings == {t: uncached(model, t) for t in readings}
    assert readings[2.4] == FULL and readings[2.5] == FOOT.context
    model.resume(None, 4.0)
    assert model.bytes_at(4.0) == FULL and model.bytes_at(3.9) == FOOT.context
    model.die(5.0)
    assert model.bytes_at(4.5) == FULL and model.bytes_at(5.0) == 0 and model.bytes_at(9.0) == 0
