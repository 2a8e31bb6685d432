"""A tiny MILES-style pipeline: rollout engines and a Megatron-like trainer take turns on the
same GPUs, every switch through offload_fsm's orchestrator.

    rollout -> engines sleep -> trainer wakes, trains -> trainer sleeps -> engines wake
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from offload_fsm import Orchestrator


class Pipeline:
    def __init__(
        self, orchestrator: Orchestrator, engines: Sequence[str], trainer_id: str, trainer: Any
    ) -> None:
        self.orchestrator = orchestrator
        self.engines = list(engines)
        self.trainer_id = trainer_id
        self.trainer = trainer  # the trainer's handle (wake_up()/sleep(), like a Ray actor)
        self.steps = 0

    async def before_training(self) -> None:
        """Shrink the engines, then wake the trainer through the residual gate."""
        await self.orchestrator.release_many(self.engines)
        await self.orchestrator.wake(self.trainer_id)

    async def train(self) -> None:
        self.steps += 1

    async def after_training(self) -> None:
        """Offload the trainer, then bring the engines back for the next rollout."""
        await self.orchestrator.release(self.trainer_id)
        await self.orchestrator.wake_many(self.engines)

    async def step(self) -> None:
        await self.before_training()
        await self.train()
        await self.after_training()
