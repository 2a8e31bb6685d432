"""Shared probe rounds: gates that poll at the same moment get one backend round between them.

A release of six engines runs six gates in lockstep, each polling the same node's GPUs; a
wake of a group polls them again. Without sharing, each gate pays its own NVML round
(``docs/performance.md``). :class:`SharedRounds` wraps a backend: the first caller opens a
batch, yields once so the callers ready at the same moment can join, then runs one backend
round over the union of their GPUs; each caller gets the round cut down to its own GPUs.

Freshness: a caller joins only a batch whose backend round has not started, so every
answer was sampled after it was asked for, exactly as with a round of its own.

Faults stay where they were: when a shared round fails (an unhealthy GPU, a backend error),
or its leader is cancelled (its probe deadline), every caller retries with a round of its own
GPUs, so one GPU's fault never fails a gate on other GPUs, and every error still names the
caller's own devices.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import anyio.lowlevel

from offload_fsm.probe.base import DeviceMemory, GpuDevice, GpuProcess, ProbeBackend, ProbeRound


class _Batch:
    """Callers waiting on one backend round (open to joiners until that round starts)."""

    __slots__ = ("devices", "joiners", "memory", "processes", "round", "union")

    def __init__(self, devices: Sequence[GpuDevice]) -> None:
        self.devices = devices  # the leader's
        self.union: dict[str, GpuDevice] = {}  # everybody's, built when the first joins
        self.joiners: list[anyio.Event] = []  # a wake-up each
        self.round: ProbeRound | None = None  # None once done: retry alone
        self.memory: dict[str, DeviceMemory] = {}
        self.processes: dict[str, list[GpuProcess]] = {}

    def join(self, devices: Sequence[GpuDevice]) -> anyio.Event:
        union = self.union
        if not union:
            union.update((d.key, d) for d in self.devices)
        for dev in devices:
            union.setdefault(dev.key, dev)  # key -> device, in the order asked
        done = anyio.Event()
        self.joiners.append(done)
        return done

    def finish(self, round: ProbeRound | None) -> None:
        self.round = round
        if round is not None and self.joiners:  # indexed once, each caller cuts its part
            self.memory = {m.device.key: m for m in round.memory}
            for p in round.processes:
                self.processes.setdefault(p.device.key, []).append(p)
        for done in self.joiners:
            done.set()

    def cut(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        """The shared round, for ``devices`` only (in their order)."""
        round = self.round
        assert round is not None
        memory = tuple(self.memory[d.key] for d in devices)
        if memory == round.memory:
            return round
        procs = tuple(p for d in devices for p in self.processes.get(d.key, ()))
        unknown = round.unknown_processes
        if unknown:
            keys = {d.key for d in devices}
            unknown = tuple(k for k in unknown if k in keys)
        return ProbeRound(
            backend=round.backend,
            sampled_at=round.sampled_at,
            memory=memory,
            processes=procs,
            per_gpu_processes=round.per_gpu_processes,
            notes=round.notes,
            unknown_processes=unknown,
            unplaced=round.unplaced,
        )


class SharedRounds:
    """A :class:`ProbeBackend` whose concurrent rounds share one round of ``backend``."""

    def __init__(self, backend: ProbeBackend) -> None:
        self.backend = backend
        self.name = backend.name
        # The open batch per set of nodes: a round stays on the nodes its callers asked about
        # (a batch across every node would make each round, and each cut, as big as the run).
        self._open: dict[tuple[str | None, ...], _Batch] = {}
        self.backend_rounds = 0  # rounds this wrapper asked of the backend
        self.shared_answers = 0  # answers served from a round another caller ran

    async def devices(self) -> tuple[GpuDevice, ...]:
        return await self.backend.devices()

    async def probe(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        nodes = _nodes(devices)
        batch = self._open.get(nodes)
        if batch is not None:
            await batch.join(devices).wait()
            if batch.round is not None:
                self.shared_answers += 1
                return batch.cut(devices)
            return await self._alone(devices)
        batch = self._open[nodes] = _Batch(devices)
        try:
            await anyio.lowlevel.checkpoint()  # callers ready at this moment join now
        except BaseException:  # cancelled before its round: the joiners retry alone
            batch.finish(None)
            raise
        finally:
            del self._open[nodes]  # started (or cancelled): later callers open a new batch
        if not batch.joiners:  # (a cancelled leader's joiners find no round and retry alone)
            batch.finish(None)  # nobody joined: a plain round, its errors the caller's own
            return await self._alone(devices)
        self.backend_rounds += 1
        try:
            round = await self.backend.probe(tuple(batch.union.values()))
        except Exception:  # a fault: every caller retries with a round of its own GPUs
            batch.finish(None)
            return await self._alone(devices)
        except BaseException:  # cancelled (its deadline): the joiners retry without it
            batch.finish(None)
            raise
        batch.finish(round)
        return batch.cut(devices)

    async def _alone(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        self.backend_rounds += 1
        return await self.backend.probe(devices)

    async def aclose(self) -> None:
        await self.backend.aclose()


def _nodes(devices: Sequence[GpuDevice]) -> tuple[str | None, ...]:
    if len(devices) == 1:  # the common case: one engine, one GPU
        return (devices[0].node,)
    first = devices[0].node if devices else None
    if all(d.node == first for d in devices):  # one engine, one node
        return (first,)
    return tuple(sorted({d.node for d in devices}, key=str))
