"""HTTP plumbing shared by the engine adapters: one client, one error mapping, and
:class:`HttpAdapter`, the part of an HTTP adapter that is not engine-specific.

Every httpx failure is mapped here, at the boundary, into the project's error tree:

    httpx.TimeoutException (connect/read/write/pool)     -> EngineCallTimeout
    httpx.NetworkError, httpx.RemoteProtocolError        -> EngineUnreachable
    (refused, reset, dropped without an answer)
    any other httpx.HTTPError                             -> EngineError
    an answer with status >= 400                          -> EngineError ("HTTP 500: <body>")
    an answer that should be JSON and is not              -> EngineError

Every message is built from the URL with its user-info masked and passed through
:func:`offload_fsm.core.redact.redact` (a body that echoes a key back is cleaned too): credentials
in the URL or in an ``Authorization`` header never reach an error, an event or a log.
"""

from __future__ import annotations

import json as _json
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import httpx

from offload_fsm.core.errors import ConfigError, EngineCallTimeout, EngineError, EngineUnreachable
from offload_fsm.core.redact import redact, register_header, register_url
from offload_fsm.engines._calls import call_hook
from offload_fsm.engines.base import check_process_root

BODY_EXCERPT_CHARS = 300


def body_excerpt(response: httpx.Response) -> str:
    """The start of a response body on one line, for error messages."""
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError):
        text = repr(response.content[:BODY_EXCERPT_CHARS])
    text = redact(" ".join(text.split()))
    if len(text) > BODY_EXCERPT_CHARS:
        text = text[:BODY_EXCERPT_CHARS] + "..."
    return text or "<empty body>"


def check_timeout(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, value, "a positive number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(name, value, "a positive, finite number of seconds")
    return float(value)


def check_tags(
    tags: Sequence[str] | None, allowed: Collection[str] | None = None
) -> list[str] | None:
    """Validate memory tags: None means "everything"; otherwise a non-empty list of names."""
    if tags is None:
        return None
    if isinstance(tags, (str, bytes)):  # "weights" would otherwise iterate as characters
        raise ConfigError("tags", tags, "None or a sequence of tag names, not a single string")
    out = list(tags)
    if not out:
        raise ConfigError("tags", tags, "None (everything) or a non-empty sequence of tag names")
    for tag in out:
        if not isinstance(tag, str) or not tag:
            raise ConfigError("tags", tags, "tag names as non-empty strings")
        if allowed is not None and tag not in allowed:
            raise ConfigError("tags", tags, f"tag names among {sorted(allowed)}")
    if len(set(out)) != len(out):
        raise ConfigError("tags", tags, "tag names without duplicates")
    return out


class HttpEngineClient:
    """An httpx.AsyncClient bound to one engine, raising only EngineError subclasses."""

    def __init__(
        self,
        engine_id: str,
        base_url: str,
        *,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(engine_id, str) or not engine_id:
            raise ConfigError("engine_id", engine_id, "a non-empty string")
        if isinstance(base_url, str):
            register_url(base_url)
        for name, value in (headers or {}).items():
            register_header(name, value)
        shown = redact(base_url) if isinstance(base_url, str) else base_url
        try:
            url = httpx.URL(base_url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ConfigError("base_url", shown, "an http(s) URL") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError("base_url", shown, "an http(s) URL with a host")
        self.engine_id = engine_id
        self.base_url = str(url).rstrip("/")  # with its user-info: httpx sends it as Basic auth
        self.shown_url = redact(self.base_url)  # what messages name
        self.timeout_s = check_timeout("timeout_s", timeout_s)
        # trust_env=False: a proxy from the environment must never sit between us and an
        # engine on loopback or the cluster network.
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=self.timeout_s,
            transport=transport,
            trust_env=False,
            headers=dict(headers) if headers else None,
        )

    async def request(
        self,
        call: str,
        method: str,
        path: str,
        *,
        json: object = None,
        params: Sequence[tuple[str, str]] | None = None,
        timeout_s: float | None = None,
        any_status: bool = False,
    ) -> httpx.Response:
        """Send one request; transport failures become EngineError subclasses, and so does a
        status >= 400 (with a body excerpt) unless ``any_status`` (the caller reads it)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        where = f"{method} {self.shown_url}{path}"
        try:
            response = await self._client.request(
                method,
                path,
                json=json,
                params=list(params) if params is not None else None,
                timeout=timeout,
            )
        except httpx.TimeoutException as exc:
            raise EngineCallTimeout(
                self.engine_id, call, redact(f"{where}: no answer within {timeout:g} s ({exc!r})")
            ) from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise EngineUnreachable(
                self.engine_id, call, redact(f"{where}: engine unreachable ({exc!r})")
            ) from exc
        except httpx.HTTPError as exc:
            raise EngineError(self.engine_id, call, redact(f"{where}: {exc!r}")) from exc
        if not any_status:
            self.raise_for_status(call, response)
        return response

    def raise_for_status(self, call: str, response: httpx.Response) -> None:
        if response.status_code >= 400:
            raise EngineError(
                self.engine_id,
                call,
                f"{response.request.method} {response.request.url.path} answered "
                f"HTTP {response.status_code}: {body_excerpt(response)}",
            )

    def json_of(self, call: str, response: httpx.Response) -> Any:
        """The response body as JSON, or EngineError naming the call and the body."""
        try:
            return _json.loads(response.content)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise EngineError(
                self.engine_id,
                call,
                f"{response.request.url.path} answered HTTP {response.status_code} with a "
                f"body that is not JSON: {body_excerpt(response)}",
            ) from exc

    async def aclose(self) -> None:
        await self._client.aclose()


class HttpAdapter:
    """What the HTTP engine adapters share: the engine's client, its process root and the
    admission hooks (sync or async callables, e.g. take the engine out of / back into a
    router), run first in prepare_release and last in finish_wake."""

    def __init__(
        self,
        engine_id: str,
        base_url: str,
        *,
        process_root: int | None,
        timeout_s: float,
        stop_admission: Callable[[], Any] | None,
        start_admission: Callable[[], Any] | None,
        transport: httpx.AsyncBaseTransport | None,
        headers: Mapping[str, str] | None,
    ) -> None:
        self._process_root = check_process_root(process_root)
        self.engine_id = engine_id
        self._http = HttpEngineClient(
            engine_id, base_url, timeout_s=timeout_s, transport=transport, headers=headers
        )
        self._stop_admission = stop_admission
        self._start_admission = start_admission

    @property
    def base_url(self) -> str:
        """The engine's URL for display: its user-info masked (see offload_fsm.core.redact)."""
        return self._http.shown_url

    @property
    def process_root(self) -> int | None:
        return self._process_root

    async def _stop_admission_hook(self) -> None:
        if self._stop_admission is not None:
            await call_hook(
                self.engine_id, "prepare_release", self._stop_admission, hook="stop_admission"
            )

    async def _start_admission_hook(self) -> None:
        if self._start_admission is not None:
            await call_hook(
                self.engine_id, "finish_wake", self._start_admission, hook="start_admission"
            )

    async def aclose(self) -> None:
        await self._http.aclose()
