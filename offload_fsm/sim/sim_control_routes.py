"""The simulated server's own control routes (tests drive the simulator through these).

GET /_sim/state, GET|POST /_sim/faults (a FaultPlan as JSON), POST /_sim/reset. A route
answers by raising (see :mod:`.sim_server_state`); any other path returns.
"""

from __future__ import annotations

import os
import time

from offload_fsm.sim.sim_model import FaultPlan
from offload_fsm.sim.sim_server_state import Reply, SimServerState


def control_routes(
    st: SimServerState, method: str, path: str, query: dict[str, list[str]], body: object
) -> None:
    if path == "/_sim/state" and method == "GET":
        state = st.child("state")
        assert isinstance(state, dict)
        raise Reply(
            200,
            {
                **state,
                "pid": os.getpid(),
                "scheduler_pid": st.scheduler_pid,
                "calls": dict(st.calls),
                "busy": time.monotonic() < st.busy_until,
            },
        )
    if path == "/_sim/faults":
        if method == "POST":
            st.plan = FaultPlan.from_json(body)
        raise Reply(200, st.plan.to_json())
    if path == "/_sim/reset" and method == "POST":
        st.child("reset")
        with st.lock:
            st.calls.clear()
            st.plan = FaultPlan()
            st.busy_until = 0.0
        raise Reply(200, None)
