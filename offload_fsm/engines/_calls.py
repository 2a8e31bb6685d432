"""Calling user-supplied hooks (sync or async) from async adapter code."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import anyio.to_thread

from offload_fsm.core.errors import EngineError
from offload_fsm.core.redact import redact


def _is_async(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 (an object with an async __call__)
    )


async def call_user(fn: Callable[..., Any], *args: Any) -> Any:
    """Await ``fn(*args)`` if it is async; run it in a worker thread if it is sync.

    A sync callable that returns an awaitable (e.g. a lambda around a coroutine function)
    has that awaitable awaited too. A sync call abandoned by cancellation (a timeout) keeps
    running in its thread: its effect is then unknown, which is why the orchestrator marks
    the engine ``failed`` on a timeout.
    """
    if _is_async(fn):
        return await fn(*args)

    def boxed() -> tuple[Any]:  # trio refuses a thread function that returns a coroutine
        return (fn(*args),)

    (result,) = await anyio.to_thread.run_sync(boxed, abandon_on_cancel=True)
    if inspect.isawaitable(result):
        result = await result
    return result


async def call_hook(
    engine_id: str, call: str, fn: Callable[..., Any], *args: Any, hook: str | None = None
) -> None:
    """Run user code (a hook, a trainer's offload/onload); its failure becomes EngineError
    (naming ``hook`` where given)."""
    try:
        await call_user(fn, *args)
    except EngineError:
        raise
    except Exception as exc:  # user code may raise anything; cancellation passes through
        raise EngineError(
            engine_id, call, redact(f"{hook} hook raised {exc!r}" if hook else f"{exc!r}")
        ) from exc
