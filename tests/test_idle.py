"""wait_all_tasks_blocked: returns only once no other task can run (asyncio and trio)."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

from offload_fsm.idle import _hook_for, wait_all_tasks_blocked


async def test_returns_after_a_busy_task_blocks() -> None:
    steps: list[int] = []
    gate = anyio.Event()

    async def busy() -> None:
        for i in range(200):
            steps.append(i)
            await anyio.lowlevel.checkpoint()  # runnable again at once: not blocked
        await gate.wait()  # blocked from here on

    async with anyio.create_task_group() as tg:
        tg.start_soon(busy)
        await wait_all_tasks_blocked()
        assert len(steps) == 200
        gate.set()


async def test_a_chain_of_wakeups_is_not_idle() -> None:
    """Task A wakes B, B wakes C, ...: the loop is busy until the last link blocks."""
    events = [anyio.Event() for _ in range(50)]
    reached: list[int] = []

    async def link(i: int) -> None:
        await events[i].wait()
        reached.append(i)
        if i + 1 < len(events):
            events[i + 1].set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        for i in range(len(events)):
            tg.start_soon(link, i)
        await wait_all_tasks_blocked()
        assert reached == []
        events[0].set()
        await wait_all_tasks_blocked()
        assert reached == list(range(50))
        tg.cancel_scope.cancel()


async def test_a_cancelled_wait_leaves_the_next_one_working() -> None:
    spinning = True

    async def spin() -> None:
        while spinning:
            await anyio.lowlevel.checkpoint()  # never blocked: the wait cannot end
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(spin)
        with anyio.move_on_after(0.05) as scope:
            await wait_all_tasks_blocked()
        assert scope.cancelled_caught
        spinning = False
        await wait_all_tasks_blocked()  # spin is blocked now
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_waiting_twice_in_a_row_shares_one_selector_hook() -> None:
    loop = asyncio.get_running_loop()
    await wait_all_tasks_blocked()
    hook = _hook_for(loop)
    await wait_all_tasks_blocked()
    assert _hook_for(loop) is hook
    assert loop._selector is hook  # type: ignore[attr-defined]


def test_a_loop_without_a_selector_is_refused_by_name() -> None:
    class ProactorLike:
        _ready: list[object] = []

    with pytest.raises(RuntimeError, match="ProactorLike"):
        _hook_for(ProactorLike())  # type: ignore[arg-type]


async def test_several_waiters_each_return() -> None:
    """Woken together, each waiter would see the others ready and wait again, forever."""
    returned: list[int] = []

    async def waiter(i: int) -> None:
        await wait_all_tasks_blocked()
        returned.append(i)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(waiter, i)
    assert sorted(returned) == [0, 1, 2, 3]
