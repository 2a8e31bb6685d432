"""vLLM HTTP adapter (sleep mode).

Endpoints as read in vllm-project/vllm ``vllm/entrypoints/serve/dev/sleep/api_router.py``
(our search index's copy at commit e7a47b8; older releases had the same routes in
``vllm/entrypoints/openai/api_server.py``). They exist only when the server runs with
``VLLM_SERVER_DEV_MODE=1`` and ``--enable-sleep-mode``:

    POST /sleep?level=1|2[&mode=abort|wait|keep]   -> 200 (no body). Level 1 offloads the
         weights to CPU and drops the KV cache; level 2 drops both. ``mode`` (newer servers)
         says what happens to running requests; older servers ignore it.
    POST /wake_up[?tags=weights&tags=kv_cache]      -> 200; no tags wakes everything
    GET  /is_sleeping                               -> {"is_sleeping": bool}

vLLM has no per-tag sleep, so :meth:`VLLMAdapter.release` takes ``tags=None`` only. vLLM does
not report its pids over HTTP: pass the API server's pid (the root of the engine-core
processes that hold the memory) as ``process_root``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import httpx

from offload_fsm.core.errors import ConfigError, EngineError
from offload_fsm.engines._http import HttpAdapter, check_tags

VLLM_WAKE_TAGS = ("weights", "kv_cache")
SleepMode = Literal["abort", "wait", "keep"]
Hook = Callable[[], Any]

_SLEEP_MODES = ("abort", "wait", "keep")


class VLLMAdapter(HttpAdapter):
    """Drives one vLLM OpenAI-compatible server through its dev-mode sleep endpoints."""

    name = "vllm"

    def __init__(
        self,
        engine_id: str,
        base_url: str,
        *,
        process_root: int | None = None,
        sleep_level: Literal[1, 2] = 1,
        sleep_mode: SleepMode | None = None,
        timeout_s: float = 60.0,
        stop_admission: Hook | None = None,
        start_admission: Hook | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """``sleep_mode`` None sends no ``mode`` (the server's default, ``abort`` where
        supported). ``stop_admission`` / ``start_admission`` as in the SGLang adapter."""
        if sleep_level not in (1, 2) or isinstance(sleep_level, bool):
            raise ConfigError("sleep_level", sleep_level, "1 or 2")
        if sleep_mode is not None and sleep_mode not in _SLEEP_MODES:
            raise ConfigError("sleep_mode", sleep_mode, f"one of {_SLEEP_MODES} or None")
        super().__init__(
            engine_id,
            base_url,
            process_root=process_root,
            timeout_s=timeout_s,
            stop_admission=stop_admission,
            start_admission=start_admission,
            transport=transport,
            headers=headers,
        )
        self._level = sleep_level
        self._mode = sleep_mode

    async def prepare_release(self, drain_timeout_s: float) -> None:
        """Stop admission. vLLM's /sleep handles running requests itself (``sleep_mode``);
        ``drain_timeout_s`` is accepted for the common interface and not used here."""
        await self._stop_admission_hook()

    async def release(self, tags: Sequence[str] | None) -> None:
        """POST /sleep?level=N. vLLM sleeps as a whole: ``tags`` must be None."""
        if tags is not None:
            raise ConfigError(
                "tags", tags, "None: vLLM's /sleep releases everything (choose sleep_level)"
            )
        params = [("level", str(self._level))]
        if self._mode is not None:
            params.append(("mode", self._mode))
        await self._http.request("release", "POST", "/sleep", params=params)

    async def resume(self, tags: Sequence[str] | None) -> None:
        """POST /wake_up (tags as repeated ``tags=`` query parameters). Never retried."""
        # vLLM silently ignores a tag it does not know, so unknown tags are refused here.
        checked = check_tags(tags, allowed=VLLM_WAKE_TAGS)
        params = [] if checked is None else [("tags", t) for t in checked]
        await self._http.request("resume", "POST", "/wake_up", params=params)

    async def finish_wake(self) -> None:
        await self._start_admission_hook()

    async def is_sleeping(self) -> bool:
        """GET /is_sleeping (diagnostic: memory is measured, not taken from this)."""
        response = await self._http.request("is_sleeping", "GET", "/is_sleeping")
        body = self._http.json_of("is_sleeping", response)
        value = body.get("is_sleeping") if isinstance(body, dict) else None
        if not isinstance(value, bool):
            raise EngineError(
                self.engine_id,
                "is_sleeping",
                f"expected {{'is_sleeping': bool}}, got {body!r:.200}",
            )
        return value
