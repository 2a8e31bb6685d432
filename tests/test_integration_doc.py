"""Runs every ``python`` block of docs/integration.md, then calls what they define against the
fake GPU ledger, a stand-in nvidia-smi and real processes (this test process, or a real
``sleep`` tree, is the engine)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from offload_fsm.compat import gates
from offload_fsm.compat import miles as compat_miles
from offload_fsm.core.errors import ConfigError, GateTimeout
from offload_fsm.probe.base import GIB
from offload_fsm.probe.processes import ProcessTable
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from tests.fake_smi import FakeSmi

DOC = Path(__file__).resolve().parents[1] / "docs" / "integration.md"
ME = os.getpid()
COTENANT = 2**22 + 3
AWARE = "--query-compute-apps=gpu_bus_id,pid,used_memory"
VAR = "MILES_MAX_RESIDUAL_GPU_MEM_GB"


def doc_namespace() -> dict[str, Any]:
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    assert len(blocks) >= 7, "the doc's runnable snippets went missing"
    namespace: dict[str, Any] = {"__name__": "integration_doc"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC}:block{i}", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return doc_namespace()


def test_the_doc_names_only_patches_that_exist() -> None:
    text = DOC.read_text()
    named = set(re.findall(r"\(patches/([\w.-]+\.patch)\)", text))
    present = {f.name for f in (DOC.parent / "patches").glob("*.patch")}
    assert named == present and named
    assert "```diff" not in text  # the diffs are the checked patch files, not prose


def test_the_miles_swap_measures_the_engine_tree_or_says_na(
    doc: dict[str, Any], smi: FakeSmi, monkeypatch: pytest.MonkeyPatch
) -> None:
    child = subprocess.Popen(["sleep", "30"])  # the engine's scheduler, a child of this process
    try:
        bus = "00000000:3B:00.0"
        smi.answer(AWARE, f"{bus}, {child.pid}, 2048\n{bus}, {COTENANT}, 9000\n")
        engine = SimpleNamespace(process=SimpleNamespace(pid=ME))
        monkeypatch.setattr(compat_miles, "detect_pid_namespace", lambda root: "host")
        assert doc["engine_resident_gib"](engine) == 2.0
        assert doc["engine_resident_gib"](SimpleNamespace(process=None)) is None
        # In a container's own PID namespace the pids nvidia-smi lists are not ours: n/a.
        monkeypatch.setattr(compat_miles, "detect_pid_namespace", lambda root: "foreign")
        assert doc["engine_resident_gib"](engine) is None
    finally:
        child.kill()
        child.wait(5)


@pytest.fixture
def shared_backend() -> Iterator[FakeGpus]:
    """The process-wide probe the RLix gate uses, replaced by the fake ledger."""
    fake = FakeGpus(make_devices(4))
    gates._shared["backend"] = FakeBackend(fake)
    yield fake
    gates._shared.pop("backend", None)


def rlix_pipeline(cls: type[Any]) -> Any:
    pipeline = cls()
    pipeline._pipeline_id = "p1"
    pipeline._rollout_manager = None
    args = SimpleNamespace(rollout_num_gpus=2, rollout_num_gpus_per_engine=1)
    pipeline._pipeline_config = SimpleNamespace(miles_args=args, cluster_device_mappings={})
    return pipeline


def test_the_rlix_gate_is_called_as_rlix_calls_it(
    doc: dict[str, Any], shared_backend: FakeGpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(VAR, raising=False)
    pipeline = rlix_pipeline(doc["GatedPipeline"])
    shared_backend.set_usage(COTENANT, 1, 12 * GIB)  # the other pipeline's engine, releasing
    shared_backend.step(COTENANT, 1, int(1.5 * GIB), after_s=0.15)
    t0 = time.monotonic()
    assert pipeline._wait_for_overlap_engines_offloaded([0, 1], timeout_s=5.0) is None
    assert time.monotonic() - t0 >= 0.15
    shared_backend.set_usage(COTENANT, 0, int(7.5 * GIB))  # over RLix's 7.0 default
    with pytest.raises(GateTimeout):
        pipeline._wait_for_overlap_engines_offloaded([0], timeout_s=0.2)
    monkeypatch.setenv(VAR, "0")
    with pytest.raises(RuntimeError, match="must be > 0"):
        pipeline._wait_for_overlap_engines_offloaded([0], timeout_s=0.2)


def test_rlix_leniency_is_there_when_asked_for(
    doc: dict[str, Any], shared_backend: FakeGpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(VAR, raising=False)
    shared_backend.set_usage(COTENANT, 0, 20 * GIB)
    wait = doc["rlix_lenient_wait"](backend=FakeBackend(shared_backend))

    class Plain:
        pass

    assert wait(rlix_pipeline(Plain), [0], timeout_s=0.2) is None  # logged LOUD, then wakes


def test_forwarding_puts_the_threshold_into_every_actor(
    doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(VAR, "7")
    env = doc["actor_runtime_env"]("p1")
    assert env["env_vars"]["PIPELINE_ID"] == "p1" and env["env_vars"][VAR] == "7"
    assert VAR in doc["FORWARDED_ENV"]
    monkeypatch.setenv(VAR, "seven")
    with pytest.raises(ConfigError, match=VAR):
        doc["actor_runtime_env"]("p1")


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
    wait = gates.wait_for_engine_release
    with pytest.raises(GateTimeout) as info:
        wait(ME, [1], timeout_s=0.2, backend=FakeBackend(gpus), pid_namespace="host")
    assert info.value.readings == {gpus.devices[1].key: 29 * GIB}


def test_engine_resume_gate_waits_for_the_whole_gpu(doc: dict[str, Any]) -> None:
    gpus = FakeGpus(make_devices(2))
    gpus.set_usage(COTENANT, 1, 20 * GIB)  # the trainer, still offloading
    gpus.step(COTENANT, 1, int(1.5 * GIB), after_s=0.15)
    t0 = time.monotonic()
    assert doc["before_engine_resume"]([0, 1], backend=FakeBackend(gpus)) == 1.5
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
