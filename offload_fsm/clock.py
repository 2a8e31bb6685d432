"""Injected clocks. Real time for production, virtual time for tests and the simulator.

``now()`` is monotonic seconds (deadlines, elapsed), ``wall()`` is the event timestamp,
``sleep()`` waits. :class:`VirtualClock` makes backoff, settle windows and deadlines run in
virtual time: fast and exact. Use :func:`deadline` instead of ``anyio.fail_after`` wherever the
wait must follow the injected clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

import anyio
import anyio.lowlevel

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup


class Clock(Protocol):
    def now(self) -> float: ...
    def wall(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    """The machine's clocks; ``now`` is ``time.monotonic``."""

    virtual = False

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


class _Sleeper:
    __slots__ = ("deadline", "event", "gone", "seq")

    def __init__(self, deadline: float, seq: int) -> None:
        self.deadline = deadline
        self.seq = seq
        self.event = anyio.Event()
        self.gone = False  # cancelled: left in the heap, dropped when it reaches the top

    def __lt__(self, other: _Sleeper) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class VirtualClock:
    """Virtual time that jumps to the earliest pending deadline once every task is blocked.

    Only the earliest sleeper is awake: it waits until no other task can run (trio's
    ``wait_all_tasks_blocked``; on asyncio, an empty ready queue twice in a row), then moves
    time to its deadline, returns, and hands the watch to the next earliest sleeper. The
    others wait on events, so a thousand sleepers cost nothing per jump. Only for code that
    does no real I/O while virtual time runs.
    """

    virtual = True

    def __init__(self, start: float = 0.0, *, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._heap: list[_Sleeper] = []
        self._counter = itertools.count()
        self.jumps = 0

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by hand (for synchronous tests)."""
        if seconds < 0 or not math.isfinite(seconds):
            raise ValueError(f"cannot advance a clock by {seconds!r}")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        if not seconds > 0:
            await anyio.lowlevel.checkpoint()
            return
        me = _Sleeper(self._now + seconds, next(self._counter))
        heapq.heappush(self._heap, me)
        try:
            while True:
                if self._head() is me:
                    await _all_tasks_blocked(lambda: self._head() is me)
                    # A wait can complete in the same pass that cancelled us: honour that
                    # before moving time, or a cancelled sleeper would jump the clock.
                    await anyio.lowlevel.checkpoint_if_cancelled()
                    if self._head() is me:  # nobody earlier registered meanwhile
                        heapq.heappop(self._heap)
                        if me.deadline > self._now:
                            self._now = me.deadline
                            self.jumps += 1
                        self._wake_head()
                        return
                else:
                    event = me.event
                    await event.wait()
                    me.event = anyio.Event()
        except BaseException:  # cancelled: drop our deadline (lazily: O(1)), pass the watch on
            me.gone = True
            self._wake_head()
            raise

    def _head(self) -> _Sleeper | None:
        heap = self._heap
        while heap and heap[0].gone:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def _wake_head(self) -> None:
        head = self._head()
        if head is not None:
            head.event.set()


async def _all_tasks_blocked(still_head: Callable[[], bool]) -> None:
    """Return once no other task of this event loop can run, or early once ``still_head``
    turns false (an earlier sleeper took over: two spinners would keep each other busy)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: trio (anyio's only other backend)
        loop = None
        trio = sys.modules.get("trio")
        if trio is not None:
            import trio.testing

            await trio.testing.wait_all_tasks_blocked()
            return
    if loop is not None:
        ready = getattr(loop, "_ready", None)  # CPython's run queue (stable since 3.4)
        if ready is not None:
            idle = 0
            while idle < 2 and still_head():  # twice: callbacks may schedule callbacks
                await asyncio.sleep(0)
                idle = idle + 1 if not ready else 0
            return
    for _ in range(8):  # unknown loop: give runnable tasks a few passes
        await anyio.lowlevel.checkpoint()


@asynccontextmanager
async def deadline(clock: Clock, seconds: float) -> AsyncIterator[None]:
    """Like ``anyio.fail_after`` but timed by ``clock``: raises ``TimeoutError``."""
    if not getattr(clock, "virtual", False):
        with anyio.fail_after(seconds):
            yield
        return
    expired = completed = False
    try:
        async with anyio.create_task_group() as tg:

            async def _expire() -> None:
                nonlocal expired
                await clock.sleep(seconds)
                expired = True
                tg.cancel_scope.cancel()

            tg.start_soon(_expire)
            try:
                yield
                completed = True
            finally:
                tg.cancel_scope.cancel()  # stop the watchdog (the body is done either way)
    except BaseExceptionGroup as group:
        # The body's own error, not a group: callers catch the typed errors they expect.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    if expired and not completed:
        raise TimeoutError(f"deadline of {seconds:g} s passed")
