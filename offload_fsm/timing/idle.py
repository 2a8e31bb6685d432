"""Wait until every task of the running event loop is blocked (what moves virtual time).

Trio has this built in (``trio.testing.wait_all_tasks_blocked``). On asyncio, anyio's
``wait_all_tasks_blocked()`` serves any loop, but it looks again only every 100 ms of real
time while some task can still run: right for a test that waits once, too slow for a
simulation whose virtual clock moves thousands of times. So a run on virtual time starts its
asyncio loop with :func:`new_event_loop` (``anyio.run(..., backend_options=BACKEND_OPTIONS)``
or :func:`run`): a ``SelectorEventLoop`` given, through its public constructor, a selector
that knows when the loop goes idle. The loop asks its selector to wait (``select`` with a
timeout other than 0) only when no callback is ready to run; that moment is the wake-up.
"""

from __future__ import annotations

import asyncio
import selectors
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from offload_fsm.timing.backend import running_asyncio_loop

_T = TypeVar("_T")


async def wait_all_tasks_blocked() -> None:
    """Return once no other task of this event loop can run (asyncio or trio)."""
    loop = running_asyncio_loop()
    if loop is None:  # not asyncio: trio, anyio's other backend
        import trio.testing

        await trio.testing.wait_all_tasks_blocked()
        return
    selector = _IDLE_SELECTORS.get(loop)
    if selector is None:  # a loop this module did not make: anyio's polling wait
        await anyio.wait_all_tasks_blocked()
        return
    waiter: asyncio.Future[None] = loop.create_future()
    selector.add(waiter)
    await waiter


class IdleSelector(selectors.BaseSelector):
    """A selector that wakes one waiter, instead of waiting, when the loop goes idle."""

    def __init__(self, inner: selectors.BaseSelector | None = None) -> None:
        self._inner = inner if inner is not None else selectors.DefaultSelector()
        self._waiters: list[asyncio.Future[None]] = []

    def add(self, waiter: asyncio.Future[None]) -> None:
        if len(self._waiters) > 8:  # cancelled waiters stay until the next idle moment
            self._waiters = [w for w in self._waiters if not w.done()]
        self._waiters.append(waiter)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # The loop passes timeout 0 whenever a callback is ready (or it is stopping).
        if timeout == 0 or not any(not w.done() for w in self._waiters):
            return self._inner.select(timeout)
        ready = self._inner.select(0)
        if ready:  # I/O is ready: its callbacks run first, the loop is not idle
            return ready
        # One waiter per idle moment, oldest first (as trio does): woken together, each would
        # see the others ready to run, conclude the loop is busy, and wait again, forever.
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                break
        return []

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def close(self) -> None:
        self._inner.close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.get_key(fileobj)

    def get_map(self) -> Any:
        return self._inner.get_map()


_IDLE_SELECTORS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, IdleSelector] = (
    weakref.WeakKeyDictionary()
)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """An asyncio loop whose idle moments :func:`wait_all_tasks_blocked` sees at once."""
    selector = IdleSelector()
    loop = asyncio.SelectorEventLoop(selector)
    _IDLE_SELECTORS[loop] = selector
    return loop


# anyio.run(fn, backend="asyncio", backend_options=BACKEND_OPTIONS); trio takes no options.
BACKEND_OPTIONS: dict[str, Any] = {"loop_factory": new_event_loop}


def backend_options(backend: str) -> dict[str, Any]:
    """The ``backend_options`` that let virtual time run at full speed on ``backend``."""
    return dict(BACKEND_OPTIONS) if backend == "asyncio" else {}


def run(fn: Callable[..., Awaitable[_T]], *args: Any, backend: str = "asyncio") -> _T:
    """``anyio.run`` with a loop whose idle moments virtual time can see."""
    return anyio.run(fn, *args, backend=backend, backend_options=backend_options(backend))


__all__ = [
    "BACKEND_OPTIONS",
    "IdleSelector",
    "backend_options",
    "new_event_loop",
    "run",
    "wait_all_tasks_blocked",
]
