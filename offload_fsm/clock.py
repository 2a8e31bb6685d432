"""Injected clocks. Real time for production, virtual time for tests and the simulator.

``now()`` is monotonic seconds (deadlines, elapsed), ``wall()`` is the event timestamp,
``sleep()`` waits. :class:`VirtualClock` makes backoff, settle windows and deadlines run in
virtual time: fast and exact. Use :func:`deadline` instead of ``anyio.fail_after`` wherever the
wait must follow the injected clock.
"""

from __future__ import annotations

import heapq
import itertools
import math
import sys
import time
from collections.abc import AsyncIterator
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


class VirtualClock:
    """Virtual time that jumps to the earliest pending deadline once every task is idle.

    Works on asyncio and trio alike (no loop integration): a sleeper registers its deadline,
    then yields; the earliest sleeper advances time only after ``idle_passes`` scheduler
    passes in which no new sleeper registered, so tasks that are merely runnable get to
    register first. Only for code that does no real I/O while virtual time runs.
    """

    virtual = True

    def __init__(
        self, start: float = 0.0, *, wall_start: float = 1_700_000_000.0, idle_passes: int = 4
    ) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._heap: list[tuple[float, int]] = []
        self._counter = itertools.count()
        self._generation = 0
        self._idle_passes = idle_passes

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
        entry = (self._now + max(0.0, seconds), next(self._counter))
        heapq.heappush(self._heap, entry)
        self._generation += 1
        try:
            quiet = 0
            seen = self._generation
            while True:
                await anyio.lowlevel.checkpoint()
                if self._heap and self._heap[0] is entry and self._now >= entry[0]:
                    break  # an earlier jump already reached our deadline
                if self._generation != seen:
                    seen, quiet = self._generation, 0
                    continue
                quiet += 1
                if quiet >= self._idle_passes and self._heap and self._heap[0] is entry:
                    self._now = max(self._now, entry[0])
                    break
            heapq.heappop(self._heap)
            self._generation += 1
        except BaseException:  # cancelled while waiting: drop our deadline
            if entry in self._heap:
                self._heap.remove(entry)
                heapq.heapify(self._heap)
                self._generation += 1
            raise


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
