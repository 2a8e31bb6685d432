"""The example of docs/testing.md: one pipeline step is safe, and the kit catches a double
resume and a skipped gate."""

import pytest

from miles_pipeline import Pipeline
from offload_fsm.testing import assert_no_wake_over_threshold, assert_replays_clean
from offload_fsm.testing import assert_transitions


async def run_step(world, pipeline_cls=Pipeline):
    await world.sglang("p1.engine0", gpus=[0, 1], pipeline="p1")
    trainer = await world.trainer("p1.trainer", gpus=[0], pipeline="p1")
    await pipeline_cls(world.orchestrator, ["p1.engine0"], "p1.trainer", trainer).step()
    log = await world.finish()
    assert_transitions(log, "p1.trainer", ["gated", "waking", "active", "releasing", "slept"])
    assert_no_wake_over_threshold(log)
    assert_replays_clean(log)


async def test_a_step_wakes_the_trainer_once_through_the_gate(fsm_world):
    await run_step(fsm_world)


class DoubleResume(Pipeline):
    async def train(self):
        await self.trainer.wake_up()  # a second code path wakes the trainer again


class SkippedGate(Pipeline):
    async def before_training(self):
        await self.orchestrator.release_many(self.engines)
        await self.trainer.wake_up()  # the old "sleep 3 s and go": no gate


@pytest.mark.parametrize(
    "mistake, rule", [(DoubleResume, "double-resume"), (SkippedGate, "gate-skipped")]
)
async def test_the_kit_catches_the_mistake(fsm_world, mistake, rule):
    with pytest.raises(AssertionError, match=rule):
        await run_step(fsm_world, mistake)
