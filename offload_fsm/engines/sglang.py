"""SGLang HTTP adapter.

Endpoints as read in sgl-project/sglang ``python/sglang/srt/entrypoints/http_server.py``
(our search index's copies at commits 9c0549b and 0025436, SGLang 0.4.x-0.5.x) and
``python/sglang/srt/managers/io_struct.py``:

    POST /abort_request              {"abort_all": true}                  (AbortReq) -> 200
    GET|POST /flush_cache            200 when idle; 400 "...When there are running or waiting
                                     requests, the operation will not be performed."
    POST /pause_generation           {"mode": "abort"|"retract"|"in_place"}
                                     (PauseGenerationReqInput; older servers ignore a body)
    POST /continue_generation        {}  (ContinueGenerationReqInput)
    GET|POST /release_memory_occupation  {"tags": [...]}; no "tags" = everything -> 200 ``null``
    GET|POST /resume_memory_occupation   same; a failure is 400 {"error": {"message": ...}}
    GET /server_info                 (newer; ``/get_server_info`` is the older, deprecated path)
                                     internal_states[i].memory_usage: GB computed at load time

Tags are ``weights``, ``kv_cache``, ``cuda_graph``. Resuming a tag that is not released raises
inside SGLang: ``resume`` is not idempotent and is never retried here. The ``memory_usage``
figures do not drop after a release, so :meth:`SGLangAdapter.server_info` is a diagnostic and
never a gate. SGLang does not report its pids over HTTP: pass the launcher's pid (the spawn
parent of the ``sglang::scheduler`` processes that hold the memory) as ``process_root``.

Release order (what MILES and slime do): stop admission (a router hook) -> abort all ->
wait until ``/flush_cache`` answers 200 (idle; bounded) -> pause generation -> release.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import httpx

from offload_fsm.core.errors import ConfigError, EngineCallTimeout, EngineError
from offload_fsm.engines._http import HttpAdapter, body_excerpt, check_tags, check_timeout
from offload_fsm.timing.clock import Clock, RealClock

SGLANG_TAGS = ("weights", "kv_cache", "cuda_graph")
PauseMode = Literal["abort", "retract", "in_place"]
Hook = Callable[[], Any]

_PAUSE_MODES = ("abort", "retract", "in_place")
_DRAIN_POLL_FIRST_S = 0.005
_DRAIN_POLL_CAP_S = 0.1


class SGLangAdapter(HttpAdapter):
    """Drives one SGLang HTTP server (``python -m sglang.launch_server``)."""

    name = "sglang"

    def __init__(
        self,
        engine_id: str,
        base_url: str,
        *,
        process_root: int | None = None,
        timeout_s: float = 60.0,
        pause_mode: PauseMode | None = "abort",
        stop_admission: Hook | None = None,
        start_admission: Hook | None = None,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """``timeout_s`` bounds each HTTP request (the orchestrator bounds whole calls).
        ``pause_mode`` None skips ``/pause_generation`` (servers older than the endpoint).
        ``stop_admission`` / ``start_admission``: sync or async callables (e.g. remove the
        engine from / add it back to a router) run first in prepare_release and last in
        finish_wake. ``transport`` lets tests inject ``httpx.MockTransport``."""
        if pause_mode is not None and pause_mode not in _PAUSE_MODES:
            raise ConfigError("pause_mode", pause_mode, f"one of {_PAUSE_MODES} or None")
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
        self._pause_mode = pause_mode
        self._clock: Clock = clock or RealClock()

    async def prepare_release(self, drain_timeout_s: float) -> None:
        """Stop admission, abort everything, wait (bounded) until idle, pause generation."""
        drain_timeout_s = check_timeout("drain_timeout_s", drain_timeout_s)
        call = "prepare_release"
        await self._stop_admission_hook()
        await self._http.request(call, "POST", "/abort_request", json={"abort_all": True})
        await self._wait_idle(call, drain_timeout_s)
        if self._pause_mode is not None:
            await self._http.request(
                call, "POST", "/pause_generation", json={"mode": self._pause_mode}
            )

    async def _wait_idle(self, call: str, drain_timeout_s: float) -> None:
        # /flush_cache answers 400 while requests run or wait, 200 once it flushed an idle
        # engine: the same idle test slime and MILES use before releasing memory.
        # Each poll has the normal request timeout (an engine that stops answering is a call
        # timeout); the drain bound is checked between polls, the last poll at the bound.
        deadline = self._clock.now() + drain_timeout_s
        interval = _DRAIN_POLL_FIRST_S
        polls = 0
        while True:
            response = await self._http.request(call, "POST", "/flush_cache", any_status=True)
            polls += 1
            if response.status_code == 200:
                return
            if response.status_code != 400:
                self._http.raise_for_status(call, response)
                raise EngineError(
                    self.engine_id,
                    call,
                    f"/flush_cache answered HTTP {response.status_code}: {body_excerpt(response)}",
                )
            remaining = deadline - self._clock.now()
            if remaining <= 0:
                raise EngineCallTimeout(
                    self.engine_id,
                    call,
                    f"still busy after {drain_timeout_s:g} s ({polls} /flush_cache polls "
                    f"answered 400: requests still running or waiting)",
                )
            await self._clock.sleep(min(interval, remaining))
            interval = min(interval * 2, _DRAIN_POLL_CAP_S)

    async def release(self, tags: Sequence[str] | None) -> None:
        """POST /release_memory_occupation; no tags releases weights, KV cache and graphs."""
        await self._memory_call("release", "/release_memory_occupation", tags)

    async def resume(self, tags: Sequence[str] | None) -> None:
        """POST /resume_memory_occupation. Not idempotent: never retried."""
        await self._memory_call("resume", "/resume_memory_occupation", tags)

    async def _memory_call(self, call: str, path: str, tags: Sequence[str] | None) -> None:
        checked = check_tags(tags)
        body: dict[str, Any] = {} if checked is None else {"tags": checked}
        await self._http.request(call, "POST", path, json=body)

    async def finish_wake(self) -> None:
        """Continue generation, then re-open admission."""
        call = "finish_wake"
        if self._pause_mode is not None:
            await self._http.request(call, "POST", "/continue_generation", json={})
        await self._start_admission_hook()

    async def flush_cache(self) -> bool:
        """Flush the radix cache once; False when the engine is busy (HTTP 400)."""
        response = await self._http.request("flush_cache", "POST", "/flush_cache", any_status=True)
        if response.status_code == 400:
            return False
        self._http.raise_for_status("flush_cache", response)
        return True

    async def server_info(self) -> dict[str, Any]:
        """GET /server_info (falling back to the older /get_server_info on 404).

        Diagnostic only: its memory figures are computed at load time."""
        call = "server_info"
        response = await self._http.request(call, "GET", "/server_info", any_status=True)
        if response.status_code == 404:  # servers before the /server_info rename
            response = await self._http.request(call, "GET", "/get_server_info", any_status=True)
        self._http.raise_for_status(call, response)
        info = self._http.json_of(call, response)
        if not isinstance(info, dict):
            raise EngineError(self.engine_id, call, f"expected a JSON object, got {info!r:.200}")
        return info

    async def memory_usage(self) -> tuple[dict[str, float], ...]:
        """``memory_usage`` of each DP rank from /server_info (GB, as SGLang reports it at
        load time: weight, kvcache, graph/cuda_graph, token_capacity). Diagnostic only."""
        info = await self.server_info()
        states = info.get("internal_states")
        if not isinstance(states, list):
            raise EngineError(
                self.engine_id, "server_info", "/server_info has no internal_states list"
            )
        out = []
        for i, state in enumerate(states):
            usage = state.get("memory_usage") if isinstance(state, dict) else None
            if not isinstance(usage, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in usage.values()
            ):
                raise EngineError(
                    self.engine_id,
                    "server_info",
                    f"internal_states[{i}].memory_usage is not numbers: {usage!r:.200}",
                )
            out.append({str(k): float(v) for k, v in usage.items()})
        return tuple(out)
