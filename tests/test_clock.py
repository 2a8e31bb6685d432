"""Injected clocks: VirtualClock ordering and deadlines, on asyncio and trio."""

from __future__ import annotations

import math
import time

import anyio
import pytest

from offload_fsm.timing.clock import RealClock, VirtualClock
from offload_fsm.timing.deadlines import RoundDeadlines, deadline


async def test_sleepers_wake_in_deadline_order_at_their_deadline() -> None:
    clock = VirtualClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    started = time.monotonic()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for name, seconds in (("c", 30.0), ("a", 10.0), ("d", 3600.0), ("b", 20.0)):
                tg.start_soon(sleeper, name, seconds)
    assert woke == [("a", 10.0), ("b", 20.0), ("c", 30.0), ("d", 3600.0)]
    assert time.monotonic() - started < 2  # an hour of virtual time, at once


async def test_equal_deadlines_wake_in_the_order_they_slept() -> None:
    clock = VirtualClock()
    woke: list[int] = []

    async def sleeper(i: int) -> None:
        await clock.sleep(5.0)
        woke.append(i)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(sleeper, i)
                await anyio.lowlevel.checkpoint()  # fix the order in which they register
    assert woke == [0, 1, 2, 3, 4]
    assert clock.now() == 5.0


async def test_sequential_sleeps_add_up_exactly() -> None:
    clock = VirtualClock(start=100.0, wall_start=1_000.0)
    for _ in range(10):
        await clock.sleep(0.1)
    assert math.isclose(clock.now(), 101.0)
    assert math.isclose(clock.wall(), 1_001.0)
    await clock.sleep(-3)  # a negative sleep is a zero sleep, never time travel
    assert math.isclose(clock.now(), 101.0)


async def test_runnable_tasks_get_to_sleep_before_time_jumps() -> None:
    # However long a task stays runnable (not sleeping), time does not jump past it: it
    # registers its own, earlier deadline first.
    clock = VirtualClock()
    seen: list[float] = []

    async def busy() -> None:
        for _ in range(200):
            await anyio.lowlevel.checkpoint()
        for _ in range(2):
            await anyio.lowlevel.checkpoint()
            seen.append(clock.now())
        await clock.sleep(10)
        seen.append(clock.now())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(busy)
            await clock.sleep(60)
            seen.append(clock.now())
    assert seen == [0.0, 0.0, 10.0, 60.0]


async def test_deadline_expires_in_virtual_time() -> None:
    clock = VirtualClock()
    with anyio.fail_after(5):
        with pytest.raises(TimeoutError, match="deadline of 5 s"):
            async with deadline(clock, 5):
                await clock.sleep(10)
    assert clock.now() == 5.0


async def test_deadline_not_reached_lets_the_body_finish() -> None:
    clock = VirtualClock()
    with anyio.fail_after(5):
        async with deadline(clock, 5):
            await clock.sleep(2)
        await clock.sleep(10)  # the watchdog is gone: no late TimeoutError
    assert clock.now() == 12.0


async def test_nested_deadlines_the_shorter_fires() -> None:
    clock = VirtualClock()
    inner_timed_out = False
    with anyio.fail_after(5):
        async with deadline(clock, 30):
            try:
                async with deadline(clock, 3):
                    await clock.sleep(100)
            except TimeoutError:
                inner_timed_out = True
            assert clock.now() == 3.0
            await clock.sleep(1)
    assert inner_timed_out
    assert clock.now() == 4.0


async def test_cancelled_sleeper_gives_up_its_deadline() -> None:
    clock = VirtualClock()
    woke_at: list[float] = []

    async def long_sleeper() -> None:
        await clock.sleep(50)
        woke_at.append(clock.now())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as inner:
                    inner.start_soon(clock.sleep, 30.0)  # will be cancelled at t=10
                    tg.start_soon(long_sleeper)
                    await clock.sleep(10)
                    scope.cancel()
    # Had the cancelled deadline (30) stayed queued first, nobody could advance past it.
    assert woke_at == [50.0]


def test_advance_moves_time_and_refuses_nonsense() -> None:
    clock = VirtualClock()
    clock.advance(1.5)
    assert clock.now() == 1.5
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="cannot advance"):
            clock.advance(bad)
    assert clock.now() == 1.5


async def test_real_clock_deadline_uses_real_time() -> None:
    clock = RealClock()
    before = clock.now()
    with pytest.raises(TimeoutError):
        async with deadline(clock, 0.05):
            await clock.sleep(5)
    assert 0.04 <= clock.now() - before < 2
    assert abs(clock.wall() - time.time()) < 1


async def test_cancelled_timers_do_not_pile_up_or_keep_their_callbacks() -> None:
    """A long call deadline cancelled at once must not stay in the heap for its whole span
    (a large run makes thousands a second), nor keep what its callback refers to alive."""
    clock = VirtualClock()
    keep = clock.call_later(1.0, lambda: None)
    timers = [clock.call_later(120.0, lambda: None) for _ in range(1000)]
    for timer in timers:
        timer.cancel()
    assert len(clock._timers) <= 2 * 64
    assert all(t.callback is None for t in timers)
    assert keep.callback is not None and not keep.gone
    timers[0].cancel()  # twice: a no-op, not a second count
    assert clock._timers_live == 1
    keep.cancel()
    await clock.sleep(2.0)  # the keeper task sees nothing left to keep and ends
    assert clock._timers_live == 0


async def test_round_deadlines_time_out_a_hung_round_and_keep_serving_the_next() -> None:
    clock = VirtualClock()
    calls: list[str] = []

    async def round_(seconds: float) -> str:
        await clock.sleep(seconds)
        calls.append(f"{seconds:g}")
        return "ok"

    with RoundDeadlines(clock) as rounds:
        assert await rounds.run(1.0, round_, 0.5) == "ok"
        await clock.sleep(5.0)  # between rounds nothing is armed: a long pause is fine
        with pytest.raises(TimeoutError, match="deadline of 1 s"):
            await rounds.run(1.0, round_, 30.0)
        assert clock.now() == pytest.approx(6.5)  # 0.5 + 5 + 1: cut at its deadline
        assert await rounds.run(1.0, round_, 0.25) == "ok"  # a fresh scope after the expiry
    assert calls == ["0.5", "0.25"]
    assert clock._timers_live == 0


async def test_round_deadlines_each_await_keeps_its_own_deadline() -> None:
    clock = VirtualClock()
    with RoundDeadlines(clock) as rounds:
        for _ in range(50):
            await rounds.run(5.0, clock.sleep, 0.001)
        await rounds.run(10.0, clock.sleep, 7.0)  # longer than the rounds before it allowed
        assert clock.now() == pytest.approx(7.05)
        with pytest.raises(TimeoutError, match=r"deadline of 0\.5 s"):
            await rounds.run(0.5, clock.sleep, 60.0)  # cut at its own deadline
        assert clock.now() == pytest.approx(7.55)
        await clock.sleep(100.0)  # between rounds: nothing armed cuts this pause
        assert await rounds.run(1.0, clock.sleep, 0.5) is None
    assert clock._timers_live == 0  # no deadline outlives its await


async def test_round_deadlines_pass_an_outer_cancellation_through() -> None:
    clock = VirtualClock()
    with anyio.CancelScope() as outer:
        with RoundDeadlines(clock) as rounds:

            async def cancel_outer() -> None:
                outer.cancel()
                await clock.sleep(10.0)

            await rounds.run(1.0, cancel_outer)
        pytest.fail("the cancellation must not be turned into a result")  # pragma: no cover
    assert outer.cancelled_caught


async def test_round_deadlines_on_real_time() -> None:
    with RoundDeadlines(RealClock()) as rounds:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await rounds.run(0.05, anyio.sleep, 5.0)
        assert time.monotonic() - started < 2
        await rounds.run(0.05, anyio.sleep, 0.0)
        await anyio.sleep(0.1)  # disarmed between rounds: this pause is not cut


async def test_round_deadlines_disarm_after_a_round_that_raised() -> None:
    """A round that fails (not a timeout) must not leave its deadline armed: it would cut
    the pause or the round after it."""
    clock = VirtualClock()

    async def fails() -> None:
        raise ValueError("transient")

    with RoundDeadlines(clock) as rounds:
        with pytest.raises(ValueError):
            await rounds.run(1.0, fails)
        await clock.sleep(5.0)  # past the failed round's deadline
        assert await rounds.run(1.0, clock.sleep, 0.5) is None
    assert clock.now() == pytest.approx(5.5)
