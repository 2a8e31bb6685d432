"""Wait until every task of the running event loop is blocked (what moves virtual time).

Trio has this built in (``trio.testing.wait_all_tasks_blocked``). On asyncio, the loop asks
its selector to wait (``select`` with a timeout other than 0) only when no callback is
ready to run: a thin wrapper around the selector turns that moment into a wake-up. Polling
with ``sleep(0)`` instead cost one loop callback per loop iteration for as long as other
tasks were busy: over a third of all callbacks in the scale benchmark.
"""

from __future__ import annotations

import asyncio
import selectors
import weakref
from typing import Any

from offload_fsm.oneshot import checkpoint


async def wait_all_tasks_blocked() -> None:
    """Return once no other task of this event loop can run (asyncio or trio)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: trio, anyio's other backend
        import trio.testing

        await trio.testing.wait_all_tasks_blocked()
        return
    hook = _hook_for(loop)
    ready = loop._ready  # type: ignore[attr-defined]  # checked by _hook_for
    while True:
        waiter: asyncio.Future[None] = loop.create_future()
        hook.add(waiter)
        await waiter
        # The select that woke us may also have made I/O callbacks ready, queued in the
        # same batch as ours: then the loop is not idle after all.
        if not ready:
            return
        await checkpoint()


class _IdleSelector:
    """A selector that wakes its waiters, instead of waiting, when the loop goes idle."""

    def __init__(self, inner: selectors.BaseSelector) -> None:
        self._inner = inner
        self._waiters: list[asyncio.Future[None]] = []

    def add(self, waiter: asyncio.Future[None]) -> None:
        if len(self._waiters) > 8:  # cancelled waiters stay until the next idle moment
            self._waiters = [w for w in self._waiters if not w.done()]
        self._waiters.append(waiter)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # The loop passes timeout 0 whenever a callback is ready (or it is stopping). One
        # waiter per idle moment, oldest first (as trio does): woken together, each would
        # see the others ready to run, conclude the loop is busy, and wait again, forever.
        if self._waiters and timeout != 0:
            while self._waiters:
                waiter = self._waiters.pop(0)
                if not waiter.done():
                    waiter.set_result(None)
                    timeout = 0  # the woken task is ready now: do not sleep in select
                    break
        return self._inner.select(timeout)

    def __getattr__(self, name: str) -> Any:  # register, unregister, close, get_map, ...
        return getattr(self._inner, name)


_HOOKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _IdleSelector] = (
    weakref.WeakKeyDictionary()
)


def _hook_for(loop: asyncio.AbstractEventLoop) -> _IdleSelector:
    hook = _HOOKS.get(loop)
    if hook is not None:
        return hook
    selector = getattr(loop, "_selector", None)
    if not isinstance(selector, selectors.BaseSelector) or not hasattr(loop, "_ready"):
        raise RuntimeError(
            f"virtual time cannot tell when {type(loop).__name__} is idle: it needs CPython's "
            "selector event loop (asyncio's default on Linux and macOS) or trio"
        )
    hook = _IdleSelector(selector)
    loop._selector = hook  # type: ignore[attr-defined]
    _HOOKS[loop] = hook
    return hook
