"""One-shot wake-ups for a single waiter, cheaper than ``anyio.Event`` on asyncio.

``anyio.Event()`` looks its backend up on every creation and wraps an ``asyncio.Event``
(a future per waiter): ``python -m tests.bench.bench_clock`` times the difference. The
virtual clock's sleepers and shared probe rounds make one per wait, so they use these.
One waiter each: on asyncio, a waiter that is cancelled cancels the future it awaits.
``checkpoint()`` is anyio's, minus its backend lookup: the library's own yields (clock, bus,
idle detection, shared rounds) use it.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import anyio.lowlevel


class OneShot(Protocol):
    def set(self) -> None: ...
    async def wait(self) -> None: ...


class _FutureOneShot:
    """On asyncio: a bare future."""

    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # The constructor, not loop.create_future(): the same future, one call less.
        self._future: asyncio.Future[None] = asyncio.Future(loop=loop)

    def set(self) -> None:
        if not self._future.done():  # done: already set, or its waiter was cancelled
            self._future.set_result(None)

    async def wait(self) -> None:
        await self._future


def one_shot() -> OneShot:
    """A wake-up for one waiter, on the running backend (asyncio or trio)."""
    loop = running_asyncio_loop()
    if loop is not None:
        return _FutureOneShot(loop)
    import trio  # the other backend anyio runs on

    return trio.Event()


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop; None on trio (anyio's other backend)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def checkpoint() -> None:
    """``anyio.lowlevel.checkpoint()``: on asyncio its own ``sleep(0)``, without anyio's
    lookup of the running backend (the shared probe rounds yield once per round)."""
    if running_asyncio_loop() is not None:
        await asyncio.sleep(0)
    else:
        await anyio.lowlevel.checkpoint()
