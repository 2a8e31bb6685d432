"""Trainer adapter: user-supplied offload/onload callables behind the engine interface.

For a Megatron/FSDP train group, e.g. behind Ray actor handles::

    TrainerAdapter(
        "train0",
        offload=lambda tags: ray.get([a.sleep.remote() for a in actors]),
        onload=lambda tags: ray.get([a.wake_up.remote() for a in actors]),
        process_root=None,
    )

Callables may be sync (run in a worker thread, so the event loop keeps going) or async; they
get the tags (None = everything). The adapter refuses a second onload without an offload in
between: a double resume crashes Megatron ("Cannot resume allocation that is not paused").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from offload_fsm.core.errors import ConfigError, EngineError
from offload_fsm.engines._calls import call_hook
from offload_fsm.engines.base import check_process_root

MemoryHook = Callable[[Sequence[str] | None], Any]
Hook = Callable[[], Any]


class TrainerAdapter:
    """Wraps a trainer's offload/onload callables (sync or async)."""

    name = "trainer"

    def __init__(
        self,
        engine_id: str,
        *,
        offload: MemoryHook,
        onload: MemoryHook,
        process_root: int | None = None,
        prepare: Hook | None = None,
        finish: Hook | None = None,
        initially_offloaded: bool = False,
    ) -> None:
        """``prepare`` runs in prepare_release (e.g. finish the step, destroy NCCL groups);
        ``finish`` in finish_wake (e.g. rebuild groups, sync weights)."""
        if not isinstance(engine_id, str) or not engine_id:
            raise ConfigError("engine_id", engine_id, "a non-empty string")
        for name, fn in (("offload", offload), ("onload", onload)):
            if not callable(fn):
                raise ConfigError(name, fn, "a callable taking the tags (sync or async)")
        for name, hook in (("prepare", prepare), ("finish", finish)):
            if hook is not None and not callable(hook):
                raise ConfigError(name, hook, "a callable or None")
        self._process_root = check_process_root(process_root)
        self.engine_id = engine_id
        self._offload = offload
        self._onload = onload
        self._prepare = prepare
        self._finish = finish
        self._offloaded = initially_offloaded

    @property
    def process_root(self) -> int | None:
        return self._process_root

    @property
    def offloaded(self) -> bool:
        """True after a successful offload and until a successful onload."""
        return self._offloaded

    async def prepare_release(self, drain_timeout_s: float) -> None:
        if self._prepare is not None:
            await call_hook(self.engine_id, "prepare_release", self._prepare)

    async def release(self, tags: Sequence[str] | None) -> None:
        if self._offloaded:
            raise EngineError(
                self.engine_id, "release", "already offloaded (double offload refused)"
            )
        await call_hook(
            self.engine_id, "release", self._offload, None if tags is None else list(tags)
        )
        self._offloaded = True

    async def resume(self, tags: Sequence[str] | None) -> None:
        if not self._offloaded:
            raise EngineError(
                self.engine_id,
                "resume",
                "not offloaded: a second onload is refused (not idempotent)",
            )
        # Marked onloaded before the call: a failed or cancelled onload is never retried.
        self._offloaded = False
        await call_hook(
            self.engine_id, "resume", self._onload, None if tags is None else list(tags)
        )

    async def finish_wake(self) -> None:
        if self._finish is not None:
            await call_hook(self.engine_id, "finish_wake", self._finish)

    async def aclose(self) -> None:
        return None
