"""The simulated server's routes that imitate vLLM's sleep mode.

/sleep?level=1|2[&mode=..], /wake_up[?tags=..], /is_sleeping. A route answers by raising (see
:mod:`.sim_server_state`); a path that is not one of these returns, for the next group.
"""

from __future__ import annotations

from offload_fsm.sim.sim_server_state import Reply, SimServerState

_VLLM_SLEEP_MODES = ("abort", "wait", "keep")


def vllm_routes(
    st: SimServerState, method: str, path: str, query: dict[str, list[str]], body: object
) -> None:
    if path == "/sleep" and method == "POST":
        level = query.get("level", ["1"])[-1]
        mode = query.get("mode", ["abort"])[-1]
        if level not in ("1", "2") or mode not in _VLLM_SLEEP_MODES:
            raise Reply(400, {"error": f"bad level {level!r} or mode {mode!r}"})
        fault = st.enter("release")
        st.child("release", None, None if fault is None else fault.to_json(), False)
        raise Reply(200, "", "text/plain")
    if path == "/wake_up" and method == "POST":
        wake = query.get("tags")
        if wake is not None and not set(wake) <= {"weights", "kv_cache"}:
            raise Reply(400, {"error": f"unknown tags {wake}"})
        # The simulator keeps CUDA graphs with the KV cache under vLLM's two tags.
        tags = None if wake is None else [*wake, *(["cuda_graph"] if "kv_cache" in wake else [])]
        fault = st.enter("resume")
        st.child("resume", tags, None if fault is None else fault.to_json(), False)
        raise Reply(200, "", "text/plain")
    if path == "/is_sleeping" and method == "GET":
        st.enter("is_sleeping")
        state = st.child("state")
        assert isinstance(state, dict)
        raise Reply(200, {"is_sleeping": bool(state["released"])})
