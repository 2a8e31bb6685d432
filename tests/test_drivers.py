from __future__ import annotations

import io
from pathlib import Path

import pytest

from offload_fsm.core.errors import ConfigError, EngineError
from offload_fsm.drivers.runner import RunOptions, run_simulated
from offload_fsm.drivers.sim_world import SimOptions
from offload_fsm.drivers.topology import PipelineTopology, dual_topology
from offload_fsm.events.eventlog import load_events
from offload_fsm.events.kinds import EngineRegistered, PhaseChanged, RunFinished, Transition
from offload_fsm.probe.base import GIB
from tests.conftest import ASYNCIO

pytestmark = pytest.mark.parametrize("anyio_backend", [ASYNCIO])  # virtual time, one loop


def _opts(tmp_path: Path, topologies: tuple[PipelineTopology, ...], **kw: object) -> RunOptions:
    sim = kw.pop("sim", SimOptions())
    return RunOptions(
        topologies=topologies,
        threshold_bytes=8 * GIB,
        out_dir=tmp_path,
        run_id="t",
        progress=False,
        sim=sim,
        **kw,
    )  # type: ignore[arg-type]


def _check_exclusive(path: Path) -> dict[str, str]:
    """Replays the transitions: no two engines sharing a GPU are ever awake together."""
    events, report = load_events(path)
    assert report.truncated is None
    gpus = {e.engine_id: set(e.gpus) for e in events if isinstance(e, EngineRegistered)}
    state = {e.engine_id: e.initial_state for e in events if isinstance(e, EngineRegistered)}
    for e in events:
        if isinstance(e, Transition):
            assert state[e.engine_id] == e.src
            state[e.engine_id] = e.dst
            awake = [k for k, s in state.items() if s in ("waking", "active")]
            for a in awake:
                for b in awake:
                    assert a == b or not gpus[a] & gpus[b], (a, b, e.seq)
    return {k: v for k, v in state.items() if k is not None}


async def test_dual_driver_runs_clean(tmp_path: Path) -> None:
    out = io.StringIO()
    opts = _opts(tmp_path, dual_topology(4, env={}), steps=3)
    opts.progress = True
    outcome = await run_simulated(opts, out)
    assert outcome.status == "ok", outcome.error
    final = _check_exclusive(outcome.log_path)
    assert set(final.values()) <= {"slept", "active"}
    events, _ = load_events(outcome.log_path)
    phases = [(e.pipeline_id, e.step, e.phase) for e in events if isinstance(e, PhaseChanged)]
    for pipeline in ("p1", "p2"):
        assert (pipeline, 3, "train") in phases
    assert isinstance(events[-1], RunFinished) and events[-1].status == "ok"
    assert "p2 engines gated" in out.getvalue()  # waits for p1 on the shared GPUs


async def test_failure_in_one_pipeline_cancels_the_peer_and_both_clean_up(tmp_path: Path) -> None:
    sim = SimOptions(fail="p2.engine1:resume:1")
    outcome = await run_simulated(_opts(tmp_path, dual_topology(4, env={}), steps=4, sim=sim))
    assert outcome.status == "failed"
    assert isinstance(outcome.error, EngineError)
    final = _check_exclusive(outcome.log_path)
    assert final["p2.engine1"] == "failed"
    assert "active" not in final.values(), final  # everything awake was released in finally
    events, _ = load_events(outcome.log_path)
    assert any(isinstance(e, PhaseChanged) and e.phase == "cleanup" for e in events)
    finished = events[-1]
    assert isinstance(finished, RunFinished) and finished.status == "failed"
    assert "p2.engine1" in (finished.reason or "")


async def test_rlix_single_pipeline(tmp_path: Path) -> None:
    topo = (PipelineTopology("p1", (0, 1), (0, 1, 2, 3)),)
    outcome = await run_simulated(_opts(tmp_path, topo, steps=2))
    assert outcome.status == "ok", outcome.error
    final = _check_exclusive(outcome.log_path)
    # the engines off the trainer's GPUs were never shrunk
    events, _ = load_events(outcome.log_path)
    cleanup = next(e.seq for e in events if isinstance(e, PhaseChanged) and e.phase == "cleanup")
    moved = {e.engine_id for e in events if isinstance(e, Transition) and e.seq < cleanup}
    assert "p1.engine2" not in moved and "p1.engine3" not in moved
    assert set(final.values()) == {"slept"}  # the run's end released what was awake


async def test_non_contiguous_pools(tmp_path: Path) -> None:
    topo = (PipelineTopology("p1", (2,), (2, 3)),)
    outcome = await run_simulated(_opts(tmp_path, topo, steps=1))
    assert outcome.status == "ok", outcome.error
    events, _ = load_events(outcome.log_path)
    shrunk = {e.engine_id for e in events if isinstance(e, Transition) and e.dst == "releasing"}
    assert "p1.engine0" in shrunk  # GPU 2 is local engine 0 of the pool [2, 3]


async def test_fail_spec_must_name_an_engine(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--fail"):
        await run_simulated(
            _opts(tmp_path, dual_topology(4, env={}), sim=SimOptions(fail="nobody:resume"))
        )
