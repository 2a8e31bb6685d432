"""The real-GPU demo's plumbing, on the CPU: stand-in process trees in host-memory mode."""

from __future__ import annotations

import os

import pytest

from offload_fsm.core.lifecycle import State
from offload_fsm.drivers.standin_world import build_standin_world, topologies_for
from offload_fsm.probe.processes import ProcessTable
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from tests.conftest import ASYNCIO


def test_topologies_for_device_counts() -> None:
    assert [t.name for t in topologies_for(make_devices(4))] == ["p1", "p2"]
    (single,) = topologies_for(make_devices(2))
    assert single.train == (0,) and single.infer == (0, 1)


@pytest.mark.parametrize("anyio_backend", [ASYNCIO])
async def test_world_starts_process_trees_and_cleans_them_up() -> None:
    probe = FakeBackend(FakeGpus(make_devices(1)))
    world = await build_standin_world(
        topologies_for(await probe.devices()),
        probe,
        engine_gib=0.01,
        trainer_gib=0.01,
        host=True,
    )
    try:
        states = {s.engine_id: s.initial for s in world.specs}
        assert states == {"p1.engine0": State.ACTIVE, "p1.trainer": State.SLEPT}
        table = ProcessTable.snapshot()
        for engine in world.engines.values():
            root = engine.process_root
            assert root is not None
            assert engine.child_pid in table.tree(root)  # the memory holder is a child
            assert all(s.pids is None for s in world.specs)  # /proc walk, as for real
        engine = world.engines["p1.engine0"]
        await engine.release(None)
        await engine.resume(None)
        pids = [e.child_pid for e in world.engines.values()]
    finally:
        await world.aclose()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
