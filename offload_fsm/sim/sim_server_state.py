"""What the simulated server's launcher knows, and how its routes answer.

Routes answer by raising: :class:`Reply` (an HTTP answer) or :class:`Drop` (the connection
closes without one, as a dead or hung engine's would). :class:`SimServerState` is shared by
every route: the scheduler child's pipe, the fault plan, call counts, the drain state.
"""

from __future__ import annotations

import contextlib
import threading
from multiprocessing.connection import Connection
from typing import Any

from offload_fsm.sim.sim_model import Fault, FaultKind, FaultPlan, Footprint

_CHILD_REPLY_TIMEOUT_S = 10.0


class Drop(Exception):
    """Close the connection without an answer (a dropped or hung engine)."""


class Reply(Exception):
    def __init__(self, status: int, body: object, content_type: str = "application/json") -> None:
        self.status = status
        self.body = body
        self.content_type = content_type


class SimServerState:
    """What the launcher knows: the child, the fault plan, call counts, the drain state."""

    def __init__(
        self, conn: Connection, scheduler_pid: int, footprint: Footprint, plan: FaultPlan
    ) -> None:
        self.conn = conn
        self.scheduler_pid = scheduler_pid
        self.footprint = footprint
        self.plan = plan
        self.calls: dict[str, int] = {}
        self.busy_until = 0.0
        self.crashed = False
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.on_crash: Any = None  # set by main(): shuts the server down

    def child(self, op: str, *args: object) -> object:
        with self.lock:
            try:
                self.conn.send((op, *args))
                if not self.conn.poll(_CHILD_REPLY_TIMEOUT_S):
                    raise Reply(500, {"error": {"message": f"scheduler did not answer {op!r}"}})
                status, value = self.conn.recv()
            except (EOFError, OSError, BrokenPipeError) as exc:
                raise Drop from exc  # the child is gone: the engine is unreachable
        if status == "refused":
            raise Reply(400, {"error": {"message": str(value)}})
        return value

    def enter(self, call: str) -> Fault | None:
        """Count the call and apply call-level faults; memory faults are returned."""
        if self.crashed:
            raise Drop
        with self.lock:
            n = self.calls[call] = self.calls.get(call, 0) + 1
            fault = self.plan.fault_for(call, n)
        kind = fault.kind if fault is not None else None
        if fault is None:
            return None
        if kind is FaultKind.ERROR:
            raise Reply(500, {"error": {"message": "internal server error (simulated fault)"}})
        if kind is FaultKind.UNREACHABLE:
            raise Drop
        if kind is FaultKind.HANG:
            self.stopping.wait(fault.delay_s)
            raise Drop
        if kind is FaultKind.CRASH:
            self.crashed = True
            with contextlib.suppress(Drop, Reply):
                self.child("die", fault.delay_s or 0.0)
            if self.on_crash is not None:
                self.on_crash()
            raise Drop
        return fault
