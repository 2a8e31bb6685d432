"""One pipeline's loop: rollout -> shrink -> train -> expand, every wake gated.

    step n:  expand   wake the pipeline's slept engines (gated on whole-GPU residual)
             rollout  engines serve
             shrink   release the engines on the shrink GPUs (the trainer's, plus GPUs
                      shared with another pipeline), then wait for the events saying so
             train    wake the trainer (gated) -> train -> release the trainer

Cleanup runs in ``finally`` (shielded, bounded): every engine the pipeline holds awake is
released, so a failure or a cancelled peer never leaves memory behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from offload_fsm.core.errors import OffloadFsmError
from offload_fsm.core.lifecycle import State
from offload_fsm.drivers.topology import PipelineTopology
from offload_fsm.drivers.view import RunView
from offload_fsm.events.bus import Recorder
from offload_fsm.events.kinds import PhaseChanged
from offload_fsm.orchestrator.orchestrator import Orchestrator
from offload_fsm.timing.clock import Clock


@dataclass
class Pipeline:
    name: str
    topology: PipelineTopology
    engine_ids: tuple[str, ...]  # by local engine index
    trainer_id: str
    shrink_gpus: tuple[int, ...]
    orch: Orchestrator
    view: RunView
    recorder: Recorder
    clock: Clock
    rollout_s: float = 2.0
    train_s: float = 3.0
    cleanup_timeout_s: float = 120.0

    @property
    def shrink_engines(self) -> tuple[str, ...]:
        return tuple(self.engine_ids[i] for i in self.topology.engines_on(self.shrink_gpus))

    async def run(self, steps: int) -> None:
        mine = (*self.engine_ids, self.trainer_id)
        await self.view.wait_until(lambda v: all(e in v.engines for e in mine), watch=mine)
        try:
            for step in range(1, steps + 1):
                await self.step(step)
        finally:
            with anyio.CancelScope(shield=True):
                await self.cleanup()

    async def step(self, n: int) -> None:
        slept = [e for e in self.engine_ids if self.view.engines[e].state == State.SLEPT.value]
        if slept:
            await self.phase(n, "expand")
            await self.orch.wake_many(slept)
        await self.phase(n, "rollout")
        await self.clock.sleep(self.rollout_s)
        await self.phase(n, "shrink")
        shrink = self.shrink_engines
        await self.orch.release_many(shrink)
        await self.view.wait_until(
            lambda v: all(v.engines[e].state == State.SLEPT.value for e in shrink), watch=shrink
        )
        await self.phase(n, "train")
        await self.orch.wake(self.trainer_id)
        await self.clock.sleep(self.train_s)
        await self.orch.release(self.trainer_id)

    async def phase(self, step: int, phase: str) -> None:
        await self.recorder.emit(PhaseChanged, pipeline_id=self.name, step=step, phase=phase)

    async def cleanup(self) -> None:
        """Release whatever this pipeline still holds awake (bounded; errors are logged as
        events by the orchestrator and do not mask the error that ended the run)."""
        awake = [
            e for e in (*self.engine_ids, self.trainer_id) if self.orch.state(e) is State.ACTIVE
        ]
        if not awake:
            return
        await self.phase(-1, "cleanup")
        with anyio.move_on_after(self.cleanup_timeout_s):
            for engine_id in awake:
                try:
                    await self.orch.release(engine_id)
                except OffloadFsmError:
                    continue  # recorded as events; the engine is failed, keep cleaning


def shared_gpus(a: PipelineTopology, b: PipelineTopology) -> tuple[int, ...]:
    return tuple(sorted(set(a.infer) & set(b.infer)))


def shrink_gpus_for(topo: PipelineTopology, others: Sequence[PipelineTopology]) -> tuple[int, ...]:
    """The trainer's GPUs plus every GPU shared with another pipeline."""
    shared = {g for other in others for g in shared_gpus(topo, other)}
    return tuple(sorted(set(topo.train) | shared))
