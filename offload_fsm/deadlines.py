"""Deadlines that follow the injected clock: ``deadline()`` for one await, ``RoundDeadlines``
for a series of awaits in one task (a release's or a resume's engine calls, resident probe and
gate rounds). Both raise ``TimeoutError``.

On a :class:`~offload_fsm.clock.VirtualClock` a deadline is a clock timer that cancels a
scope (no task per deadline); on real time it is anyio's own; on another virtual clock a
watchdog task sleeps on it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

import anyio

from offload_fsm.clock import Clock, VirtualClock, _Sleeper

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

_T = TypeVar("_T")


def deadline(clock: Clock, seconds: float) -> AbstractAsyncContextManager[None]:
    """Like ``anyio.fail_after`` but timed by ``clock``: raises ``TimeoutError``."""
    if isinstance(clock, VirtualClock):
        return _VirtualDeadline(clock, seconds)
    if not getattr(clock, "virtual", False):
        return _RealDeadline(seconds)
    return _watchdog_deadline(clock, seconds)


class _RealDeadline:
    __slots__ = ("_scope", "_seconds")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._scope: Any = None

    async def __aenter__(self) -> None:
        self._scope = anyio.fail_after(self._seconds)
        self._scope.__enter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return self._scope.__exit__(*exc_info)  # type: ignore[no-any-return]


class _VirtualDeadline:
    """A timer the clock's watcher fires (no task per deadline); while no task sleeps on the
    clock, its keeper task does. A class, not a generator: every probe round and engine
    call enters one, and the generator machinery cost as much as the cancel scope."""

    __slots__ = ("_clock", "_scope", "_seconds", "_timer")

    def __init__(self, clock: VirtualClock, seconds: float) -> None:
        self._clock = clock
        self._seconds = seconds
        self._scope: anyio.CancelScope | None = None
        self._timer: _Sleeper | None = None

    async def __aenter__(self) -> None:
        scope = self._scope = anyio.CancelScope()
        scope.__enter__()
        self._timer = self._clock.call_later(self._seconds, scope.cancel)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._scope is not None and self._timer is not None
        self._timer.cancel()
        swallowed = self._scope.__exit__(exc_type, exc, tb)
        if self._scope.cancelled_caught and exc_type is not None:
            raise TimeoutError(f"deadline of {self._seconds:g} s passed") from None
        return swallowed


class RoundDeadlines:
    """A deadline for each of a series of awaits in one task (an operation's engine calls
    and its gate's probe rounds), under one cancel scope armed around each await and
    disarmed between them: entering and leaving an anyio cancel scope per round cost more
    than a simulated round itself. A scope that
    expired cannot be re-armed, so it is left and replaced. Use it as ``with`` in the task
    that awaits; ``await rounds.run(seconds, fn, *args)`` raises ``TimeoutError`` like
    :func:`deadline`.

    On a :class:`VirtualClock` one clock timer serves the series: disarming leaves it
    pending, and an await whose deadline is not earlier than the timer's keeps it (when it
    fires early, it looks at the await armed then: none, or one not due yet, re-arms it).
    A timer per await cost a clock entry made and cancelled for every call and round.
    """

    __slots__ = ("_clock", "_scope", "_timer", "_until")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._scope: anyio.CancelScope | None = None
        self._timer: _Sleeper | None = None  # VirtualClock: the pending timer, if any
        self._until: float | None = None  # VirtualClock: the armed await's deadline

    def __enter__(self) -> RoundDeadlines:
        self._open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._scope is not None
        if self._timer is not None:  # nothing is armed past the series
            self._timer.cancel()
            self._timer = None
        return self._scope.__exit__(exc_type, exc, tb)

    def _open(self) -> None:
        self._scope = anyio.CancelScope()
        self._scope.__enter__()

    async def run(self, seconds: float, fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        clock, scope = self._clock, self._scope
        assert scope is not None, "RoundDeadlines.run outside its with block"
        virtual = False
        if isinstance(clock, VirtualClock):
            virtual = True
            self._arm(clock, seconds)
        elif not getattr(clock, "virtual", False):
            scope.deadline = anyio.current_time() + seconds
        else:  # another virtual clock: a deadline of its own (a watchdog task)
            async with deadline(clock, seconds):
                return await fn(*args)
        try:
            result = await fn(*args)
        except BaseException as exc:
            self._disarm(scope, virtual)  # every way out: an armed await would cut what follows
            if not scope.cancel_called:
                raise
            swallowed = self._replace(exc)
            if swallowed:  # the cancellation was this deadline's alone
                raise TimeoutError(f"deadline of {seconds:g} s passed") from None
            raise
        self._disarm(scope, virtual)
        if scope.cancel_called:  # expired as the await returned: the scope is spent
            self._replace(None)
        return result

    def _arm(self, clock: VirtualClock, seconds: float) -> None:
        until = self._until = clock.now() + max(0.0, seconds)
        timer = self._timer
        if timer is None or timer.gone or timer.deadline > until:
            if timer is not None:
                timer.cancel()
            self._timer = clock.call_later(until - clock.now(), self._expire)

    def _expire(self) -> None:
        """The timer fired: cut the armed await if its deadline has come, else wait on."""
        self._timer = None
        until = self._until
        if until is None or self._scope is None:  # nothing armed now
            return
        clock = self._clock
        assert isinstance(clock, VirtualClock)
        if clock.now() >= until:
            self._scope.cancel()
        else:
            self._timer = clock.call_later(until - clock.now(), self._expire)

    def _disarm(self, scope: anyio.CancelScope, virtual: bool) -> None:
        if virtual:
            self._until = None
        elif not scope.cancel_called:
            scope.deadline = math.inf

    def _replace(self, exc: BaseException | None) -> bool:
        """Leave the spent scope (True: it swallowed ``exc``, its own cancellation) and
        enter a fresh one for the rounds still to come."""
        assert self._scope is not None
        if exc is None:
            swallowed = bool(self._scope.__exit__(None, None, None))
        else:
            swallowed = bool(self._scope.__exit__(type(exc), exc, exc.__traceback__))
        self._open()
        return swallowed


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
