"""Functions the Ray tests run inside a node's probe actor (``RayProbe.apply``).

A small module with light imports: the actor imports it by name to unpickle them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from offload_fsm.probe.base import ProbeBackend
from offload_fsm.sim.fake_backend import FakeBackend, Fault
from offload_fsm.sim.fake_gpus import FakeGpus

NodeFn = Callable[[ProbeBackend], Any]


def fake(backend: ProbeBackend) -> FakeBackend:
    assert isinstance(backend, FakeBackend), type(backend)
    return backend


def rounds(backend: ProbeBackend) -> int:
    return fake(backend).rounds


def reset(backend: ProbeBackend) -> None:
    """A fresh ledger on the same GPUs, no faults, the round count at 0."""
    b = fake(backend)
    b.gpus = FakeGpus(b.gpus.devices)
    b.rounds = 0
    b._faults.clear()


def set_usage(pid: int, index: int, nbytes: int) -> NodeFn:
    return lambda b: fake(b).gpus.set_usage(pid, index, nbytes)


def leave_after(pid: int, index: int, seconds: float) -> NodeFn:
    return lambda b: fake(b).gpus.step(pid, index, 0, after_s=seconds)


def inject_next(fault: Fault) -> NodeFn:
    return lambda b: fake(b).inject(fake(b).rounds + 1, fault)


def block_loop(seconds: float) -> NodeFn:
    """A hung actor: a blocking call on its event loop, so nothing else runs there."""
    return lambda b: time.sleep(seconds)
