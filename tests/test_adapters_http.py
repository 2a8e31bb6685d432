"""SGLang and vLLM adapters against httpx.MockTransport: request forms and error mapping."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable

import httpx
import pytest

from offload_fsm.core.errors import ConfigError, EngineCallTimeout, EngineError, EngineUnreachable
from offload_fsm.engines.base import EngineAdapter
from offload_fsm.engines.sglang import SGLangAdapter
from offload_fsm.engines.vllm import VLLMAdapter
from offload_fsm.timing.clock import VirtualClock

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that records requests and answers from a route table."""

    def __init__(self, routes: dict[str, Handler] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.routes = routes or {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        handler = self.routes.get(request.url.path)
        if handler is None:
            return httpx.Response(200, json=None)
        return handler(request)

    @property
    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]

    def body(self, i: int) -> object:
        return json.loads(self.requests[i].content) if self.requests[i].content else None


def sglang(rec: Recorder, **kw: object) -> SGLangAdapter:
    return SGLangAdapter(
        "sg0",
        "http://engine.test:30000",
        transport=httpx.MockTransport(rec),
        **kw,  # type: ignore[arg-type]
    )


def vllm(rec: Recorder, **kw: object) -> VLLMAdapter:
    return VLLMAdapter(
        "vl0",
        "http://engine.test:8000",
        transport=httpx.MockTransport(rec),
        **kw,  # type: ignore[arg-type]
    )


def test_adapters_satisfy_the_protocol() -> None:
    rec = Recorder()
    assert isinstance(sglang(rec), EngineAdapter)
    assert isinstance(vllm(rec), EngineAdapter)


# -- SGLang: request forms -----------------------------------------------------------------


async def test_sglang_release_and_resume_bodies() -> None:
    rec = Recorder()
    a = sglang(rec, process_root=4242)
    await a.release(["kv_cache", "weights"])
    await a.release(None)
    await a.resume(["weights"])
    await a.resume(None)
    await a.aclose()
    assert rec.paths == [
        "/release_memory_occupation",
        "/release_memory_occupation",
        "/resume_memory_occupation",
        "/resume_memory_occupation",
    ]
    assert [r.method for r in rec.requests] == ["POST"] * 4
    assert [rec.body(i) for i in range(4)] == [
        {"tags": ["kv_cache", "weights"]},
        {},
        {"tags": ["weights"]},
        {},
    ]
    assert a.process_root == 4242


async def test_sglang_prepare_release_order_and_drain() -> None:
    order: list[str] = []
    flushes = iter([400, 400, 200])

    def flush(request: httpx.Request) -> httpx.Response:
        order.append("flush")
        return httpx.Response(next(flushes), text="busy or flushed")

    rec = Recorder({"/flush_cache": flush})

    def stop() -> None:  # a sync hook (runs in a worker thread)
        order.append("stop_admission")

    async def start() -> None:
        order.append("start_admission")

    a = sglang(rec, stop_admission=stop, start_admission=start, clock=VirtualClock())
    await a.prepare_release(drain_timeout_s=5.0)
    assert order == ["stop_admission", "flush", "flush", "flush"]
    assert rec.paths == [
        "/abort_request",
        "/flush_cache",
        "/flush_cache",
        "/flush_cache",
        "/pause_generation",
    ]
    assert rec.body(0) == {"abort_all": True}
    assert rec.body(4) == {"mode": "abort"}
    await a.finish_wake()
    assert rec.paths[-1] == "/continue_generation"
    assert order[-1] == "start_admission"
    await a.aclose()


async def test_sglang_drain_is_bounded() -> None:
    rec = Recorder({"/flush_cache": lambda r: httpx.Response(400, text="running requests")})
    clock = VirtualClock()
    a = sglang(rec, clock=clock)
    with pytest.raises(EngineCallTimeout) as info:
        await a.prepare_release(drain_timeout_s=0.5)
    assert info.value.call == "prepare_release"
    assert "still busy after 0.5 s" in str(info.value)
    assert 0.5 <= clock.now() < 0.6  # gave up at the bound, not later
    assert "/pause_generation" not in rec.paths  # never paused a busy engine
    polls = rec.paths.count("/flush_cache")
    assert 3 <= polls <= 20  # backoff: neither one poll nor a busy loop
    await a.aclose()


async def test_sglang_pause_mode_none_skips_pause_and_continue() -> None:
    rec = Recorder()
    a = sglang(rec, pause_mode=None)
    await a.prepare_release(1.0)
    await a.finish_wake()
    assert rec.paths == ["/abort_request", "/flush_cache"]
    await a.aclose()


async def test_sglang_failed_admission_hook_stops_before_any_engine_call() -> None:
    rec = Recorder()

    async def router_down() -> None:
        raise ConnectionError("router unreachable")

    a = sglang(rec, stop_admission=router_down)
    with pytest.raises(EngineError) as info:
        await a.prepare_release(1.0)
    assert "stop_admission hook raised" in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionError)
    assert rec.requests == []
    await a.aclose()


async def test_sglang_bad_tags_are_refused_before_any_request() -> None:
    rec = Recorder()
    a = sglang(rec)
    for bad in ("weights", [], ["weights", "weights"], [""]):
        with pytest.raises(ConfigError) as info:
            await a.release(bad)  # type: ignore[arg-type]
        assert info.value.name == "tags"
    assert rec.requests == []
    await a.aclose()


def test_sglang_constructor_validates() -> None:
    with pytest.raises(ConfigError, match="base_url"):
        SGLangAdapter("e", "localhost:30000/x")
    with pytest.raises(ConfigError, match="timeout_s"):
        SGLangAdapter("e", "http://127.0.0.1:1", timeout_s=0)
    with pytest.raises(ConfigError, match="pause_mode"):
        SGLangAdapter("e", "http://127.0.0.1:1", pause_mode="stop")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="process_root"):
        SGLangAdapter("e", "http://127.0.0.1:1", process_root=-3)
    with pytest.raises(ConfigError, match="engine_id"):
        SGLangAdapter("", "http://127.0.0.1:1")


async def test_sglang_server_info_is_a_diagnostic_with_fallback() -> None:
    info = {
        "version": "0.4.6",
        "internal_states": [
            {"memory_usage": {"weight": 1.5, "kvcache": 30.1, "graph": 0.4, "token_capacity": 9}}
        ],
    }
    rec = Recorder(
        {
            "/server_info": lambda r: httpx.Response(404, json={"detail": "Not Found"}),
            "/get_server_info": lambda r: httpx.Response(200, json=info),
        }
    )
    a = sglang(rec)
    usage = await a.memory_usage()
    assert usage == ({"weight": 1.5, "kvcache": 30.1, "graph": 0.4, "token_capacity": 9.0},)
    assert rec.paths == ["/server_info", "/get_server_info"]
    await a.aclose()


# -- error mapping (both adapters share it) ---------------------------------------------------


async def test_http_500_is_engine_error_with_status_and_body() -> None:
    rec = Recorder(
        {
            "/release_memory_occupation": lambda r: httpx.Response(
                500, text="Internal Server Error: CUDA error: an illegal memory access"
            )
        }
    )
    a = sglang(rec)
    with pytest.raises(EngineError) as info:
        await a.release(None)
    err = info.value
    assert type(err) is EngineError  # plain: not a timeout, not unreachable
    assert (err.engine_id, err.call) == ("sg0", "release")
    assert "HTTP 500" in str(err) and "illegal memory access" in str(err)
    await a.aclose()


async def test_http_400_on_resume_names_sglang_message() -> None:
    msg = {"error": {"message": "Cannot resume allocation that is not paused"}}
    rec = Recorder({"/resume_memory_occupation": lambda r: httpx.Response(400, json=msg)})
    a = sglang(rec)
    with pytest.raises(EngineError, match=r"HTTP 400.*not paused"):
        await a.resume(["weights"])
    assert rec.paths == ["/resume_memory_occupation"]  # never retried
    await a.aclose()


def _raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ReadTimeout("timed out"), EngineCallTimeout),
        (httpx.ConnectTimeout("timed out"), EngineCallTimeout),
        (httpx.ConnectError("[Errno 111] Connection refused"), EngineUnreachable),
        (httpx.RemoteProtocolError("Server disconnected"), EngineUnreachable),
        (httpx.ReadError("reset by peer"), EngineUnreachable),
    ],
)
async def test_transport_errors_map_to_engine_errors(
    exc: Exception, expected: type[EngineError]
) -> None:
    for make, call in ((sglang, "resume"), (vllm, "resume")):
        rec = Recorder({"/resume_memory_occupation": _raising(exc), "/wake_up": _raising(exc)})
        a = make(rec)
        with pytest.raises(expected) as info:
            await a.resume(None)
        assert type(info.value) is expected
        assert info.value.call == call
        assert info.value.__cause__ is exc
        await a.aclose()


async def test_malformed_json_is_engine_error() -> None:
    rec = Recorder(
        {
            "/server_info": lambda r: httpx.Response(200, text="<html>proxy error</html>"),
            "/is_sleeping": lambda r: httpx.Response(200, text="{not json"),
        }
    )
    s, v = sglang(rec), vllm(rec)
    with pytest.raises(EngineError, match=r"not JSON.*proxy error"):
        await s.server_info()
    with pytest.raises(EngineError, match="not JSON"):
        await v.is_sleeping()
    await s.aclose()
    await v.aclose()


async def test_wrong_json_shape_is_engine_error() -> None:
    rec = Recorder(
        {
            "/server_info": lambda r: httpx.Response(200, json={"internal_states": [{}]}),
            "/is_sleeping": lambda r: httpx.Response(200, json={"is_sleeping": "yes"}),
        }
    )
    s, v = sglang(rec), vllm(rec)
    with pytest.raises(EngineError, match="memory_usage"):
        await s.memory_usage()
    with pytest.raises(EngineError, match="is_sleeping"):
        await v.is_sleeping()
    await s.aclose()
    await v.aclose()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connection_refused_on_a_real_closed_port() -> None:
    port = _closed_port()
    for adapter in (
        SGLangAdapter("sg", f"http://127.0.0.1:{port}", timeout_s=5),
        VLLMAdapter("vl", f"http://127.0.0.1:{port}", timeout_s=5),
    ):
        with pytest.raises(EngineUnreachable) as info:
            await adapter.release(None)
        assert "unreachable" in str(info.value)
        await adapter.aclose()


async def test_real_timeout_on_a_silent_server() -> None:
    """A listener that accepts but never answers: the request times out."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    port = sock.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    a = SGLangAdapter("sg", f"http://127.0.0.1:{port}", timeout_s=0.2)
    try:
        with pytest.raises(EngineCallTimeout, match=r"no answer within 0\.2 s"):
            await a.release(None)
    finally:
        await a.aclose()
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        sock.close()


# -- vLLM: request forms ---------------------------------------------------------------------


async def test_vllm_sleep_wake_forms() -> None:
    rec = Recorder({"/is_sleeping": lambda r: httpx.Response(200, json={"is_sleeping": True})})
    a = vllm(rec, sleep_level=2, sleep_mode="abort", process_root=77)
    await a.prepare_release(1.0)
    await a.release(None)
    await a.resume(["weights"])
    await a.resume(["weights", "kv_cache"])
    await a.resume(None)
    assert await a.is_sleeping() is True
    await a.finish_wake()
    await a.aclose()
    urls = [(r.method, r.url.path, r.url.query.decode()) for r in rec.requests]
    assert urls == [
        ("POST", "/sleep", "level=2&mode=abort"),
        ("POST", "/wake_up", "tags=weights"),
        ("POST", "/wake_up", "tags=weights&tags=kv_cache"),
        ("POST", "/wake_up", ""),
        ("GET", "/is_sleeping", ""),
    ]
    assert a.process_root == 77


async def test_vllm_refuses_tags_it_cannot_honour() -> None:
    rec = Recorder()
    a = vllm(rec)
    with pytest.raises(ConfigError, match="tags"):
        await a.release(["kv_cache"])  # vLLM sleeps as a whole
    with pytest.raises(ConfigError, match="tags"):
        await a.resume(["cuda_graph"])  # vLLM would silently ignore it
    assert rec.requests == []
    with pytest.raises(ConfigError, match="sleep_level"):
        VLLMAdapter("v", "http://127.0.0.1:1", sleep_level=3)  # type: ignore[arg-type]
    await a.aclose()


async def test_vllm_500_on_sleep() -> None:
    rec = Recorder({"/sleep": lambda r: httpx.Response(500, text="sleep mode is not enabled")})
    a = vllm(rec)
    with pytest.raises(EngineError, match="HTTP 500: sleep mode is not enabled"):
        await a.release(None)
    await a.aclose()
