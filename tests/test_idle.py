"""wait_all_tasks_blocked: returns only once no other task can run (asyncio and trio)."""

from __future__ import annotations

import asyncio
import socket
import time

import anyio
import anyio.lowlevel

from offload_fsm.timing.idle import BACKEND_OPTIONS, wait_all_tasks_blocked
from offload_fsm.timing.idle import run as run_virtual


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


def test_an_idle_aware_loop_tells_idleness_without_polling() -> None:
    """On offload_fsm.timing.idle's loop a wait ends as soon as the loop would wait for I/O, each
    time; on any other asyncio loop the wait still ends only once the busy task blocked."""

    async def main() -> tuple[float, int]:
        gate = anyio.Event()
        steps: list[int] = []

        async def busy() -> None:
            for i in range(50):
                steps.append(i)
                await anyio.lowlevel.checkpoint()
            await gate.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(busy)
            t0 = time.perf_counter()
            await wait_all_tasks_blocked()
            seen = len(steps)
            for _ in range(19):
                await wait_all_tasks_blocked()
            took = time.perf_counter() - t0
            gate.set()
        return took, seen

    took, seen = anyio.run(main, backend="asyncio", backend_options=BACKEND_OPTIONS)
    assert seen == 50 and took < 1.0  # 20 waits: no real-time polling between them
    _, seen = anyio.run(main, backend="asyncio")  # a plain loop: anyio's own wait
    assert seen == 50


def test_ready_io_is_not_idle() -> None:
    """A socket with data to read makes the loop busy: its reader runs before the wait ends."""

    async def main() -> list[str]:
        order: list[str] = []
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        try:
            a.setblocking(False)
            loop.add_reader(a, lambda: order.append("read") or loop.remove_reader(a))
            b.send(b"x")
            await wait_all_tasks_blocked()
            order.append("idle")
        finally:
            a.close()
            b.close()
        return order

    assert run_virtual(main) == ["read", "idle"]


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
