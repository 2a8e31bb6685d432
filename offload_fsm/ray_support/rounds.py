"""Probe rounds across nodes: tag one node's round with its node, merge nodes' rounds."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from offload_fsm.core.errors import ProbeError
from offload_fsm.probe.base import DeviceMemory, GpuDevice, GpuProcess, ProbeRound


def retag_round(round: ProbeRound, tagged: Mapping[str, GpuDevice]) -> ProbeRound:
    """``round`` with each device replaced by ``tagged[device.key]`` (the node-tagged one)."""

    def dev(d: GpuDevice) -> GpuDevice:
        return tagged.get(d.key, d)

    return dataclasses.replace(
        round,
        memory=tuple(dataclasses.replace(m, device=dev(m.device)) for m in round.memory),
        processes=tuple(dataclasses.replace(p, device=dev(p.device)) for p in round.processes),
        unknown_processes=tuple(
            tagged[k].key if k in tagged else k for k in round.unknown_processes
        ),
    )


def merge_rounds(
    devices: Sequence[GpuDevice], rounds: Mapping[str, ProbeRound], sampled_at: float
) -> ProbeRound:
    """One round over ``devices`` (in that order) from each node's round."""
    memory: dict[str, DeviceMemory] = {}
    processes: dict[str, list[GpuProcess]] = {}
    for rnd in rounds.values():
        for m in rnd.memory:
            memory[m.device.key] = m
        for p in rnd.processes:
            processes.setdefault(p.device.key, []).append(p)
    missing = [d.label() for d in devices if d.key not in memory]
    if missing:
        raise ProbeError(f"node rounds left out {missing}")
    backends = sorted({r.backend for r in rounds.values()})
    return ProbeRound(
        backend="ray:" + "+".join(backends),
        sampled_at=sampled_at,
        memory=tuple(memory[d.key] for d in devices),
        processes=tuple(p for d in devices for p in processes.get(d.key, ())),
        per_gpu_processes=all(r.per_gpu_processes for r in rounds.values()),
        notes=tuple(f"{node}: {n}" for node, r in sorted(rounds.items()) for n in r.notes),
        unknown_processes=tuple(k for _, r in sorted(rounds.items()) for k in r.unknown_processes),
        unplaced=tuple(u for _, r in sorted(rounds.items()) for u in r.unplaced),
    )
