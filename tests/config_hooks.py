"""Trainer hooks named by "module:function" in the config-file tests: they move the trainer's
memory in a fake ledger the test installs (``LEDGER``)."""

from __future__ import annotations

from collections.abc import Sequence

from offload_fsm.probe.base import GIB
from offload_fsm.sim.fake_gpus import FakeGpus

LEDGER: list[FakeGpus] = []
TRAINER_PID = 3_000_777
calls: list[str] = []


def offload(tags: Sequence[str] | None) -> None:
    calls.append("offload")
    LEDGER[0].set_usage(TRAINER_PID, 0, int(0.6 * GIB))


async def onload(tags: Sequence[str] | None) -> None:
    calls.append("onload")
    LEDGER[0].set_usage(TRAINER_PID, 0, 30 * GIB)


not_callable = 42
