"""Which event loop runs the current thread: the one place offload_fsm asks.

Everything async here runs on anyio, so on asyncio or trio. Code that must do one thing on
each (hand a wake-up to another thread, start a task the run does not wait for) asks here.
"""

from __future__ import annotations

import asyncio

import anyio.lowlevel


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop; None on trio (anyio's other backend) or outside any loop."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def in_event_loop() -> bool:
    """True inside a running event loop of any backend anyio supports (asyncio or trio)."""
    try:
        anyio.lowlevel.current_token()
    except RuntimeError:  # anyio.NoEventLoopError: no supported loop runs in this thread
        return False
    return True


__all__ = ["in_event_loop", "running_asyncio_loop"]
