"""The user's router hooks around a simulated engine.

In MILES a release starts by closing the engine's router admission and a wake ends by
registering it with the router again; a failed router call must stop the state change.
:class:`HookedEngine` runs the user's ``before_release`` hook before the engine's
``prepare_release`` and their ``after_wake`` hook after its ``finish_wake``, so a test sees
what the orchestrator does when the user's hook raises (the engine goes ``failed``, with the
hook's error as the reason in the log).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from offload_fsm.core.errors import EngineError
from offload_fsm.sim.engine import SimEngine

RouterHook = Callable[[str], Any]  # called with the engine id; sync or async


async def call_inline(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, awaited when it returns an awaitable: sync or async user code runs in
    the event loop, in virtual time (a worker thread would let the clock jump meanwhile)."""
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _run(engine_id: str, call: str, hook: RouterHook) -> None:
    try:
        await call_inline(hook, engine_id)
    except EngineError:
        raise
    except Exception as exc:  # the user's code may raise anything; cancellation passes
        raise EngineError(engine_id, call, f"router hook raised {exc!r}") from exc


class HookedEngine:
    """A simulated engine with the user's router hooks around its calls."""

    def __init__(
        self,
        inner: SimEngine,
        *,
        before_release: RouterHook | None = None,
        after_wake: RouterHook | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.engine_id = inner.engine_id
        self.before_release = before_release
        self.after_wake = after_wake

    @property
    def process_root(self) -> int | None:
        return self.inner.process_root

    async def prepare_release(self, drain_timeout_s: float) -> None:
        if self.before_release is not None:
            await _run(self.engine_id, "prepare_release", self.before_release)
        await self.inner.prepare_release(drain_timeout_s)

    async def release(self, tags: Sequence[str] | None) -> None:
        await self.inner.release(tags)

    async def resume(self, tags: Sequence[str] | None) -> None:
        await self.inner.resume(tags)

    async def finish_wake(self) -> None:
        await self.inner.finish_wake()
        if self.after_wake is not None:
            await _run(self.engine_id, "finish_wake", self.after_wake)

    async def aclose(self) -> None:
        await self.inner.aclose()
