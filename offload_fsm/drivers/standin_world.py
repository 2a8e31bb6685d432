"""The real-GPU world: stand-in engine and trainer processes holding real GPU memory.

One stand-in process tree per engine (``engine_gib`` on its GPU) and per trainer
(``trainer_gib``, starting released); memory is measured with the machine's probe (NVML,
else nvidia-smi) and attributed by walking ``/proc`` from each tree's parent pid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import anyio

from offload_fsm.core.errors import ConfigError
from offload_fsm.core.lifecycle import State
from offload_fsm.drivers.topology import PipelineTopology
from offload_fsm.orchestrator.orchestrator import EngineSpec
from offload_fsm.probe.base import GpuDevice, ProbeBackend
from offload_fsm.probe.processes import detect_pid_namespace
from offload_fsm.sim.standin import StandInEngine


@dataclass
class StandInWorld:
    probe: ProbeBackend
    pid_namespace: str
    specs: list[EngineSpec] = field(default_factory=list)
    pipelines: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)
    engines: dict[str, StandInEngine] = field(default_factory=dict)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for engine in self.engines.values():
                await engine.aclose()


def topologies_for(devices: Sequence[GpuDevice]) -> tuple[PipelineTopology, ...]:
    """Dual on 4+ GPUs (the default overlapping topology); else one rlix-style pipeline
    whose trainer shares GPU 0 with an engine."""
    from offload_fsm.drivers.topology import dual_topology

    if len(devices) >= 4:
        return dual_topology(4, env={})
    return (PipelineTopology("p1", (0,), tuple(range(len(devices)))),)


async def build_standin_world(
    topologies: Sequence[PipelineTopology],
    probe: ProbeBackend,
    *,
    engine_gib: float,
    trainer_gib: float,
    tms: bool = False,
    host: bool = False,
) -> StandInWorld:
    """``host``: the stand-ins hold host memory instead (CPU tests of the plumbing)."""
    devices = await probe.devices()
    world = StandInWorld(probe, detect_pid_namespace())
    taken: set[int] = set()
    try:
        for topo in topologies:
            for g in topo.infer:
                if g >= len(devices):
                    raise ConfigError(
                        f"{topo.name}.infer",
                        list(topo.infer),
                        f"GPU ids below the {len(devices)} GPUs this probe sees",
                    )
            engine_ids = []
            for index, group in enumerate(topo.engine_groups):
                if len(group) != 1:
                    raise ConfigError("gpus_per_engine", len(group), "1 for stand-in engines")
                eid = f"{topo.name}.engine{index}"
                awake = not taken.intersection(group)
                taken.update(group)
                eng = await anyio.to_thread.run_sync(
                    partial(
                        StandInEngine,
                        eid,
                        devices[group[0]],
                        engine_gib,
                        tms=tms,
                        host=host,
                        start_released=not awake,
                    )
                )
                world.engines[eid] = eng
                world.specs.append(_spec(eid, eng, topo.name, "engine", awake))
                engine_ids.append(eid)
            tid = f"{topo.name}.trainer"
            trainer = await anyio.to_thread.run_sync(
                partial(
                    StandInEngine,
                    tid,
                    devices[topo.train[0]],
                    trainer_gib,
                    tms=tms,
                    host=host,
                    start_released=True,
                )
            )
            world.engines[tid] = trainer
            world.specs.append(_spec(tid, trainer, topo.name, "trainer", False))
            world.pipelines[topo.name] = (tuple(engine_ids), tid)
    except BaseException:
        await world.aclose()
        raise
    return world


def _spec(eid: str, eng: StandInEngine, pipeline: str, role: str, awake: bool) -> EngineSpec:
    # pids=None: the orchestrator walks /proc from the parent pid, as for a real engine.
    return EngineSpec(
        eid,
        eng,
        (eng.device,),
        pipeline_id=pipeline,
        role=role,
        initial=State.ACTIVE if awake else State.SLEPT,
    )
