"""The one-waiter wake-ups and the checkpoint of offload_fsm/oneshot.py, on asyncio and trio."""

from __future__ import annotations

import anyio
import pytest

from offload_fsm.oneshot import checkpoint, one_shot


async def test_checkpoint_lets_other_tasks_run() -> None:
    spins = 0

    async def spinner() -> None:
        nonlocal spins
        while True:
            spins += 1
            await checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(spinner)
        for _ in range(10):
            await checkpoint()
        tg.cancel_scope.cancel()
    assert spins >= 5  # without a yield the spinner would not have run at all


async def test_checkpoint_is_a_cancellation_point() -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await checkpoint()
        pytest.fail("a cancelled scope's checkpoint must not return")
    assert scope.cancelled_caught


async def test_one_shot_wakes_its_waiter_once_set_and_set_twice_is_harmless() -> None:
    shot = one_shot()
    woken: list[bool] = []

    async def waiter() -> None:
        await shot.wait()
        woken.append(True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert woken == []
        shot.set()
        shot.set()
    assert woken == [True]
