"""A world of real engines from a run configuration file (:mod:`offload_fsm.drivers.config_file`):
SGLang / vLLM servers by URL and root pid, trainers by their offload / onload callables."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from offload_fsm.core.errors import ConfigError
from offload_fsm.core.lifecycle import State
from offload_fsm.drivers.config_file import EngineConfig, RunConfig, load_hook
from offload_fsm.drivers.topology import PipelineTopology
from offload_fsm.engines.base import EngineAdapter
from offload_fsm.engines.sglang import SGLangAdapter
from offload_fsm.engines.trainer import TrainerAdapter
from offload_fsm.engines.vllm import VLLMAdapter
from offload_fsm.orchestrator.orchestrator import EngineSpec
from offload_fsm.probe.base import GpuDevice, ProbeBackend
from offload_fsm.probe.devices import resolve_devices


@dataclass
class ConfigWorld:
    probe: ProbeBackend
    pid_namespace: str
    topologies: tuple[PipelineTopology, ...]
    specs: list[EngineSpec] = field(default_factory=list)
    pipelines: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)
    adapters: list[EngineAdapter] = field(default_factory=list)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for adapter in self.adapters:
                await adapter.aclose()


async def build_config_world(
    cfg: RunConfig, probe: ProbeBackend, pid_namespace: str
) -> ConfigWorld:
    """Engines and pipelines from ``cfg``; GPU ids resolved against ``probe``'s devices."""
    if not cfg.pipelines:
        raise ConfigError(f"{cfg.path}: pipeline", [], "at least one [[pipeline]]")
    topologies = tuple(PipelineTopology(p.name, p.train, p.infer) for p in cfg.pipelines)
    world = ConfigWorld(probe, pid_namespace, topologies)
    devices = await probe.devices()
    try:
        for topo in topologies:
            members = [e for e in cfg.engines if e.pipeline == topo.name]
            trainers = [e for e in members if e.role == "trainer"]
            if len(trainers) != 1:
                raise ConfigError(
                    f"{cfg.path}: pipeline {topo.name} trainers",
                    [t.id for t in trainers],
                    "exactly one role = 'trainer'",
                )
            by_index: dict[int, str] = {}
            for eng in members:
                devs = resolve_devices(list(eng.gpus), devices)
                world.specs.append(_spec(eng, devs, _adapter(eng, world)))
                if eng.role == "engine":
                    index = topo.engine_index(devs[0].index)
                    if index in by_index:
                        raise ConfigError(
                            f"{cfg.path}: engine {eng.id}.gpus",
                            list(eng.gpus),
                            f"GPUs no other engine uses ({by_index[index]} does)",
                        )
                    by_index[index] = eng.id
            missing = [i for i in range(len(topo.engine_groups)) if i not in by_index]
            if missing:
                raise ConfigError(
                    f"{cfg.path}: pipeline {topo.name}",
                    [topo.engine_groups[i] for i in missing],
                    "an engine on every infer GPU",
                )
            world.pipelines[topo.name] = (
                tuple(by_index[i] for i in sorted(by_index)),
                trainers[0].id,
            )
    except BaseException:
        await world.aclose()
        raise
    return world


def _adapter(eng: EngineConfig, world: ConfigWorld) -> EngineAdapter:
    adapter: EngineAdapter
    # SGLang's and vLLM's --api-key both check "Authorization: Bearer <key>" (docs/integration.md)
    headers = None if eng.api_key is None else {"Authorization": f"Bearer {eng.api_key}"}
    if eng.adapter == "sglang":
        assert eng.url is not None
        adapter = SGLangAdapter(eng.id, eng.url, process_root=eng.root_pid, headers=headers)
    elif eng.adapter == "vllm":
        assert eng.url is not None
        adapter = VLLMAdapter(eng.id, eng.url, process_root=eng.root_pid, headers=headers)
    else:
        assert eng.offload is not None and eng.onload is not None
        adapter = TrainerAdapter(
            eng.id,
            offload=load_hook(eng.offload, f"{eng.id}.offload"),
            onload=load_hook(eng.onload, f"{eng.id}.onload"),
            process_root=eng.root_pid,
            initially_offloaded=eng.role == "trainer",
        )
    world.adapters.append(adapter)
    return adapter


def _spec(eng: EngineConfig, devices: tuple[GpuDevice, ...], adapter: EngineAdapter) -> EngineSpec:
    # Trainers start offloaded, engines serving; pids from /proc via the root pid.
    return EngineSpec(
        eng.id,
        adapter,
        devices,
        pipeline_id=eng.pipeline,
        role=eng.role,
        initial=State.SLEPT if eng.role == "trainer" else State.ACTIVE,
    )
