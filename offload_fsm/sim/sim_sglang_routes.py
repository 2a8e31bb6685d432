"""The simulated server's routes that imitate SGLang's HTTP server.

/health (+ /health_generate), /server_info (+ /get_server_info), /abort_request, /flush_cache,
/pause_generation, /continue_generation, /release_memory_occupation,
/resume_memory_occupation. A route answers by raising (see :mod:`.sim_server_state`); a path
that is not one of these returns, for the next group of routes.
"""

from __future__ import annotations

import time
from typing import Any

from offload_fsm.probe.base import GIB
from offload_fsm.sim.sim_model import FaultKind
from offload_fsm.sim.sim_server_state import Drop, Reply, SimServerState

_PAUSE_MODES = ("abort", "retract", "in_place")


def _tags_from_body(body: object) -> list[str] | None:
    if body is None:
        return None
    if not isinstance(body, dict):
        raise Reply(400, {"error": {"message": f"expected a JSON object, got {body!r:.100}"}})
    tags = body.get("tags")
    if tags is None:
        return None
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise Reply(
            400, {"error": {"message": f"tags must be a list of strings, got {tags!r:.100}"}}
        )
    return list(tags)


def sglang_routes(
    st: SimServerState, method: str, path: str, query: dict[str, list[str]], body: object
) -> None:
    ok = Reply(200, None)
    if path in ("/health", "/health_generate") and method == "GET":
        if st.crashed:
            raise Drop
        raise Reply(200, "", "text/plain")
    if path in ("/server_info", "/get_server_info") and method == "GET":
        st.enter("server_info")
        raise Reply(200, server_info(st))
    if path == "/abort_request" and method == "POST":
        fault = st.enter("abort")
        if fault is not None and fault.kind is FaultKind.BUSY:
            st.busy_until = time.monotonic() + (fault.delay_s or 0.0)
        raise Reply(200, "", "text/plain")
    if path == "/flush_cache":
        st.enter("flush_cache")
        if time.monotonic() < st.busy_until:
            raise Reply(
                400,
                "Cache not flushed: there are running or waiting requests.\n",
                "text/plain",
            )
        raise Reply(200, "Cache flushed.\n", "text/plain")
    if path == "/pause_generation" and method == "POST":
        mode = body.get("mode", "abort") if isinstance(body, dict) else "abort"
        if mode not in _PAUSE_MODES:
            raise Reply(400, {"error": {"message": f"Invalid mode: {mode!r}"}})
        st.enter("pause")
        st.child("pause", True)
        raise Reply(200, {"message": "Generation paused successfully.", "status": "ok"})
    if path == "/continue_generation" and method == "POST":
        st.enter("continue")
        st.child("pause", False)
        raise Reply(200, {"message": "Generation continued successfully.", "status": "ok"})
    if path in ("/release_memory_occupation", "/resume_memory_occupation"):
        op = "release" if path.startswith("/release") else "resume"
        tags = _tags_from_body(body)
        fault = st.enter(op)
        st.child(op, tags, None if fault is None else fault.to_json(), True)
        raise ok  # FastAPI answers a handler's None as the JSON ``null``


def server_info(st: SimServerState) -> dict[str, Any]:
    state = st.child("state")
    assert isinstance(state, dict)
    fp = st.footprint
    return {
        "version": "offload_fsm-sim",
        "internal_states": [
            {
                # As SGLang: computed at load time, it does not drop after a release.
                "memory_usage": {
                    "weight": round(fp.weights / GIB, 2),
                    "kvcache": round(fp.kv_cache / GIB, 2),
                    "graph": round(fp.cuda_graph / GIB, 2),
                    "token_capacity": 4096,
                },
                "engine_paused": state["paused"],
                "running_batch_size": int(time.monotonic() < st.busy_until),
                "waiting_queue_size": 0,
            }
        ],
    }
