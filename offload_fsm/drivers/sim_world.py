"""The embedded default: simulated GPUs and engines with realistic numbers.

4 x 80 GiB GPUs; each inference engine holds ~52 GiB per GPU (weights 2.5, KV cache 48,
CUDA graphs 1.5, CUDA context 0.6 that no release frees); each trainer ~39 GiB awake and
~2.4 GiB asleep (Megatron's offload residual). Some releases return before the memory drops
(seeded), and a co-tenant process appears on a shared GPU for a while.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from offload_fsm.core.errors import ConfigError
from offload_fsm.core.lifecycle import State
from offload_fsm.drivers.topology import PipelineTopology
from offload_fsm.orchestrator.orchestrator import EngineSpec
from offload_fsm.probe.base import GIB
from offload_fsm.sim.engine import SimEngine
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import FakeDeviceSpec, make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.sim.sim_model import FaultPlan, Footprint
from offload_fsm.timing.clock import Clock

ENGINE_FOOTPRINT = Footprint.gib(weights=2.5, kv_cache=48.0, cuda_graph=1.5, context=0.6)
TRAINER_FOOTPRINT = Footprint.gib(weights=36.0, kv_cache=0.0, context=2.4)
COTENANT_PID = 31337


@dataclass
class SimOptions:
    gpu_count: int = 4
    gpu_total_gib: float = 80.0
    seed: int = 0
    late_release_share: float = 0.3  # share of release calls that return before memory drops
    cotenant: bool = True  # a foreign process visits a shared GPU for a few seconds
    fail: str | None = None  # "ENGINE_ID:CALL[:N]": that call fails (HTTP-500-like)
    node: str | None = None  # the simulated node's name (multi-node scale runs)


@dataclass
class SimWorld:
    gpus: FakeGpus
    specs: list[EngineSpec] = field(default_factory=list)
    engines: dict[str, SimEngine] = field(default_factory=dict)
    pipelines: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)
    _probe: FakeBackend | None = None

    @property
    def probe(self) -> FakeBackend:
        if self._probe is None:
            self._probe = FakeBackend(self.gpus)
        return self._probe

    @property
    def pid_namespace(self) -> str:
        return self.gpus.pid_namespace


def parse_fail(spec: str) -> tuple[str, str, int | None]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(
            "--fail", spec, "ENGINE_ID:CALL or ENGINE_ID:CALL:N (e.g. p2.engine1:resume:2)"
        )
    nth = None
    if len(parts) == 3:
        if not parts[2].isdecimal() or int(parts[2]) < 1:
            raise ConfigError("--fail", spec, "a call number N >= 1")
        nth = int(parts[2])
    return parts[0], parts[1], nth


async def build_sim_world(
    topologies: Sequence[PipelineTopology],
    clock: Clock,
    opts: SimOptions,
    *,
    initially_awake: dict[str, set[int]] | None = None,
) -> SimWorld:
    """Simulated GPUs plus one engine per engine group and one trainer per pipeline.

    ``initially_awake``: pipeline -> local engine indices that start active (the others
    start slept); default: a pipeline's engines start active unless an earlier pipeline
    already has an engine awake on one of their GPUs.
    """
    rng = random.Random(opts.seed)
    spec = FakeDeviceSpec(total_bytes=int(opts.gpu_total_gib * GIB))
    gpus = FakeGpus(make_devices(opts.gpu_count, spec, node=opts.node), clock)
    world = SimWorld(gpus)
    fail = parse_fail(opts.fail) if opts.fail else None
    taken: set[int] = set()
    pid = 4000  # fake pids: each node has its own ledger, so they may repeat across nodes
    for topo in topologies:
        if max(topo.infer) >= opts.gpu_count:
            raise ConfigError(
                f"{topo.name}.infer",
                list(topo.infer),
                f"GPU ids below the {opts.gpu_count} simulated GPUs",
            )
        engine_ids = []
        for index, group in enumerate(topo.engine_groups):
            eid = f"{topo.name}.engine{index}"
            awake = (
                index in initially_awake.get(topo.name, set())
                if initially_awake
                else not taken.intersection(group)
            )
            if awake:
                taken.update(group)
            pid += 1
            eng = SimEngine(eid, gpus, list(group), pid=pid, footprint=ENGINE_FOOTPRINT)
            if not awake:
                await eng.prepare_release(1.0)
                await eng.release(None)
            eng.faults = _faults(rng, opts, eid, fail)  # after set-up: set-up never faults
            world.engines[eid] = eng
            world.specs.append(_spec(eid, eng, topo, "engine", awake))
            engine_ids.append(eid)
        tid = f"{topo.name}.trainer"
        pid += 1
        trainer = SimEngine(
            tid, gpus, list(topo.train), pid=pid, footprint=TRAINER_FOOTPRINT, require_pause=False
        )
        await trainer.release(None)  # trainers start offloaded
        trainer.faults = _faults(rng, opts, tid, fail)
        world.engines[tid] = trainer
        world.specs.append(_spec(tid, trainer, topo, "trainer", False))
        world.pipelines[topo.name] = (tuple(engine_ids), tid)
    if fail is not None and fail[0] not in world.engines:
        raise ConfigError("--fail", opts.fail, f"an engine id among {sorted(world.engines)}")
    if opts.cotenant:
        shared = _shared_gpu(topologies)
        gpus.cotenant(COTENANT_PID, shared, int(9 * GIB), arrive_s=4.0, leave_s=9.0)
    return world


def _shared_gpu(topologies: Sequence[PipelineTopology]) -> int:
    counts: dict[int, int] = {}
    for topo in topologies:
        for g in topo.infer:
            counts[g] = counts.get(g, 0) + 1
    shared = [g for g, n in sorted(counts.items()) if n > 1]
    return shared[-1] if shared else max(counts)


def _faults(
    rng: random.Random, opts: SimOptions, eid: str, fail: tuple[str, str, int | None] | None
) -> FaultPlan:
    plan = FaultPlan()
    for nth in range(1, 64):
        if rng.random() < opts.late_release_share:
            plan.on("release", "late_release", nth=nth, delay_s=round(rng.uniform(0.2, 1.5), 3))
    if fail is not None and fail[0] == eid:
        plan.on(fail[1], "error", nth=fail[2])
    return plan


def _spec(eid: str, eng: SimEngine, topo: PipelineTopology, role: str, awake: bool) -> EngineSpec:
    pid = eng.pid
    return EngineSpec(
        engine_id=eid,
        adapter=eng,
        devices=eng.devices,
        pipeline_id=topo.name,
        role=role,
        initial=State.ACTIVE if awake else State.SLEPT,
        pids=lambda: frozenset({pid}),
    )
