"""Runs every ``python`` block of docs/integration.md, then calls what they define against the
fake GPU ledger (this test process, or a real ``sleep`` tree, is the engine)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from offload_fsm.errors import GateTimeout
from offload_fsm.probe.base import GIB
from offload_fsm.probe.fake import FakeBackend, FakeGpus, make_devices
from offload_fsm.probe.processes import ProcessTable

DOC = Path(__file__).resolve().parents[1] / "docs" / "integration.md"
ME = os.getpid()
COTENANT = 2**22 + 3


def doc_namespace() -> dict[str, Any]:
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    assert len(blocks) >= 6, "the doc's runnable snippets went missing"
    namespace: dict[str, Any] = {"__name__": "integration_doc"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC}:block{i}", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return doc_namespace()


def test_the_import_swap_gives_the_seed_functions(doc: dict[str, Any]) -> None:
    gpus = FakeGpus(make_devices(2))
    gpus.set_usage(ME, 1, 3 * GIB)
    gpus.set_usage(COTENANT, 1, 4 * GIB)
    backend = FakeBackend(gpus)
    assert doc["max_used_gib"]("0,1", backend=backend) == 7.0
    got = doc["max_process_residual_gib"](ME, [1], backend=backend, pid_namespace="host")
    assert got == 3.0


def test_shrink_engines_waits_for_a_late_release_and_refuses_a_kept_model(
    doc: dict[str, Any],
) -> None:
    gpus = FakeGpus(make_devices(2))
    gpus.set_usage(ME, 0, 30 * GIB)
    gpus.step(ME, 0, int(0.6 * GIB), after_s=0.15)
    t0 = time.monotonic()
    left = doc["wait_engine_released"](ME, [0], backend=FakeBackend(gpus), pid_namespace="host")
    assert time.monotonic() - t0 >= 0.15
    assert left == pytest.approx(0.6, abs=0.01)

    gpus.set_usage(ME, 1, 29 * GIB)  # no memory saver: the release freed nothing
    wait = doc["wait_for_engine_release"]
    with pytest.raises(GateTimeout) as info:
        wait(ME, [1], timeout_s=0.2, backend=FakeBackend(gpus), pid_namespace="host")
    assert info.value.readings == {gpus.devices[1].key: 29 * GIB}


def test_trainer_and_engine_wake_gates_wait_for_the_whole_gpu(doc: dict[str, Any]) -> None:
    gpus = FakeGpus(make_devices(2))
    gpus.set_usage(COTENANT, 1, 20 * GIB)  # the other pipeline's engine, still releasing
    gpus.step(COTENANT, 1, int(1.5 * GIB), after_s=0.15)
    t0 = time.monotonic()
    assert doc["before_trainer_wake"]([0, 1], backend=FakeBackend(gpus)) == 1.5
    assert time.monotonic() - t0 >= 0.15
    gpus.set_usage(COTENANT, 0, 12 * GIB)
    gpus.step(COTENANT, 0, 0, after_s=0.1)
    assert doc["before_engine_resume"]("0", backend=FakeBackend(gpus)) == 0.0


def test_shutdown_kills_the_tree_even_when_the_router_is_dead(doc: dict[str, Any]) -> None:
    root = subprocess.Popen(["bash", "-c", "sleep 60 & bash -c 'sleep 60 & wait' & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(tree := ProcessTable.snapshot().tree(root.pid)) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gpus = FakeGpus(make_devices(1))
        key = gpus.devices[0].key

        def alive(pid: int) -> bool:
            info = ProcessTable.snapshot().get(pid)
            return info is not None and info.state != "Z"

        gpus.add_source(lambda: [(p, key, 10 * GIB) for p in tree if alive(p)])

        def dead_router() -> None:
            raise ConnectionError("router at 10.0.0.1:30000 refused the connection")

        with pytest.raises(ConnectionError):
            doc["shutdown_engine"](root.pid, [0], dead_router, backend=FakeBackend(gpus))
        assert not any(alive(p) for p in tree)
        assert gpus.used(0) == 0
    finally:
        if root.poll() is None:
            root.kill()
        root.wait(5)


async def test_gate_across_nodes_with_a_multi_node_backend(doc: dict[str, Any]) -> None:
    gpus = FakeGpus(make_devices(1, node="a") + make_devices(1, node="b"))
    gpus.set_usage(COTENANT, gpus.devices[1], 2 * GIB)
    got = await doc["gate_across_nodes"](FakeBackend(gpus), list(gpus.devices))
    assert got == 2.0
