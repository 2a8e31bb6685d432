"""offload_fsm.testing: unit-test your own sleep/wake code in virtual time, with no GPU.

A :class:`World` is fake GPUs, simulated SGLang/vLLM engines and trainers (or your own
trainer's offload/onload callables) and an orchestrator, all on a virtual clock; faults are
injected by name (:mod:`offload_fsm.testing.faults`); the recorded event log is checked with
domain assertions. Installed with offload-fsm as a pytest plugin: the ``fsm_world`` fixture
(and ``fsm_clock``, ``fsm_gpus``, ``fsm_orchestrator``, ``fsm_log``) works in any anyio test,
on asyncio and trio. docs/testing.md has a worked example.
"""

from offload_fsm.testing.assertions import (
    assert_no_wake_over_threshold,
    assert_replays_clean,
    assert_transitions,
)
from offload_fsm.testing.faults import FAULTS
from offload_fsm.testing.hooks import HookedEngine
from offload_fsm.testing.log import FINDING_RULES, EventLog, Finding, RuleBroken
from offload_fsm.testing.log_builder import LogBuilder
from offload_fsm.testing.trainers import WatchedTrainer
from offload_fsm.testing.world import World

__all__ = [
    "FAULTS",
    "FINDING_RULES",
    "EventLog",
    "Finding",
    "HookedEngine",
    "LogBuilder",
    "RuleBroken",
    "WatchedTrainer",
    "World",
    "assert_no_wake_over_threshold",
    "assert_replays_clean",
    "assert_transitions",
]
