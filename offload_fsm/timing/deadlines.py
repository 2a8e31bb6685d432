"""Deadlines that follow the injected clock: ``deadline()`` for one await, ``RoundDeadlines``
for a series of awaits in one task (a release's or a resume's engine calls, resident probe and
gate rounds). Both raise ``TimeoutError``.

On real time a deadline is ``anyio.fail_after``. On a
:class:`~offload_fsm.timing.clock.VirtualClock` it is a clock timer that cancels a cancel scope
when virtual time reaches it (anyio's own deadlines follow real time, which stands still for a
virtual run); on another virtual clock a watchdog task sleeps on it.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

import anyio

from offload_fsm.timing.clock import Clock, VirtualClock

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

_T = TypeVar("_T")


def deadline(clock: Clock, seconds: float) -> AbstractAsyncContextManager[None]:
    """Like ``anyio.fail_after`` but timed by ``clock``: raises ``TimeoutError``."""
    if isinstance(clock, VirtualClock):
        return _virtual_deadline(clock, seconds)
    if not getattr(clock, "virtual", False):
        return _real_deadline(seconds)
    return _watchdog_deadline(clock, seconds)


@asynccontextmanager
async def _real_deadline(seconds: float) -> AsyncIterator[None]:
    with anyio.fail_after(seconds):
        yield


@asynccontextmanager
async def _virtual_deadline(clock: VirtualClock, seconds: float) -> AsyncIterator[None]:
    # A timer the clock's watcher fires when virtual time reaches it (while no task sleeps on
    # the clock, its keeper task does): no task per deadline.
    with anyio.CancelScope() as scope:
        timer = clock.call_later(seconds, scope.cancel)
        try:
            yield
        finally:
            timer.cancel()
    if scope.cancelled_caught:
        raise TimeoutError(f"deadline of {seconds:g} s passed")


class RoundDeadlines:
    """A deadline for each of a series of awaits in one task: an operation's engine calls and
    its gate's probe rounds, each bounded on its own (a hung call or round must not eat the
    time of those after it). Use it as ``with`` in the task that awaits;
    ``await rounds.run(seconds, fn, *args)`` raises ``TimeoutError`` like :func:`deadline`.
    """

    __slots__ = ("_clock", "_open")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._open = False

    def __enter__(self) -> RoundDeadlines:
        self._open = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False

    async def run(self, seconds: float, fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        assert self._open, "RoundDeadlines.run outside its with block"
        clock = self._clock
        if isinstance(clock, VirtualClock):
            with anyio.CancelScope() as scope:
                timer = clock.call_later(seconds, scope.cancel)
                try:
                    return await fn(*args)
                finally:
                    timer.cancel()
            # Only reached when the scope caught its own cancellation: the deadline passed.
            raise TimeoutError(f"deadline of {seconds:g} s passed")
        if not getattr(clock, "virtual", False):
            with anyio.fail_after(seconds):
                return await fn(*args)
        async with deadline(clock, seconds):
            return await fn(*args)


@asynccontextmanager
async def _watchdog_deadline(clock: Clock, seconds: float) -> AsyncIterator[None]:
    # Another virtual clock: a watchdog task sleeps on it, so time can move at all.
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
