"""Regression: a virtual-time deadline must pass even when the task that was sleeping on the
clock when the deadline started has stopped sleeping since (found by the fault matrix: an
engine call that hangs forever, while the only other sleeper finished, hung the run)."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from offload_fsm.timing.clock import VirtualClock
from offload_fsm.timing.deadlines import deadline


async def test_deadline_passes_after_the_last_sleeper_left() -> None:
    clock = VirtualClock()

    async def short_sleeper() -> None:
        await clock.sleep(1.0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(short_sleeper)
        while not clock.has_watcher:  # it sleeps now: the deadline takes the timer path
            await anyio.lowlevel.checkpoint()
        with anyio.fail_after(5):  # real seconds: the regression hung forever
            with pytest.raises(TimeoutError):
                async with deadline(clock, 3.0):
                    await anyio.sleep_forever()
    assert clock.now() == pytest.approx(3.0)


async def test_timer_set_with_nobody_sleeping_still_fires() -> None:
    clock = VirtualClock()
    fired = anyio.Event()
    clock.call_later(2.0, fired.set)
    with anyio.fail_after(5):
        await fired.wait()
    assert clock.now() == pytest.approx(2.0)


async def test_cancelled_orphan_timer_does_not_keep_time_moving() -> None:
    clock = VirtualClock()
    timer = clock.call_later(2.0, lambda: None)
    timer.cancel()
    await clock.sleep(0.5)  # an ordinary sleep is not disturbed by the keeper
    assert clock.now() == pytest.approx(0.5)


async def test_nested_deadlines_do_not_jump_time_while_a_task_runs() -> None:
    """Regression (trio): a new head that cancelled the watcher's idle wait and left again
    let the watcher move time on while the body was still running: an outer 2 s deadline
    passed around a probe that never waited (found by the fault matrix)."""
    clock = VirtualClock()
    for _ in range(50):
        t0 = clock.now()
        # The outer finds nobody asleep (a watchdog task); the inner, a timer or another.
        async with deadline(clock, 2.0), deadline(clock, 0.5):
            await anyio.lowlevel.checkpoint()
        assert clock.now() == t0
        await clock.sleep(0.001)
    assert clock.now() == pytest.approx(0.05)


async def test_the_keeper_leaves_when_its_timer_is_cancelled() -> None:
    """No task lingers (found by the soak's task count: one more task after the run)."""
    from tests.soak import count_tasks

    clock = VirtualClock()
    before = count_tasks()
    timer = clock.call_later(5.0, lambda: None)  # nobody sleeps: a keeper starts
    for _ in range(5):
        await anyio.lowlevel.checkpoint()
    assert count_tasks() == before + 1
    timer.cancel()
    for _ in range(20):
        await anyio.lowlevel.checkpoint()
    assert count_tasks() == before
    assert clock.now() == 0.0  # and it did not move time to the cancelled deadline
