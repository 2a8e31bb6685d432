"""Integration: the simulated SGLang/vLLM server as a real process tree on loopback.

The server's child process "holds" memory in ledger files keyed by its real pid; a FakeGpus
ledger reads them, so the tests watch memory move while driving the real HTTP adapters.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import psutil
import pytest

from offload_fsm.core.errors import (
    ConfigError,
    EngineCallTimeout,
    EngineError,
    EngineUnreachable,
    TransientProbeError,
)
from offload_fsm.engines.sglang import SGLangAdapter
from offload_fsm.engines.vllm import VLLMAdapter
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.sim.sim_model import FaultPlan, Footprint
from offload_fsm.sim.sim_proc import ledger_dir_source, write_ledger
from offload_fsm.sim.sim_server import SimServerProcess

FP = Footprint.gib(weights=2, kv_cache=4, cuda_graph=0.5)
DEVICES = make_devices(2)


@pytest.fixture(scope="module")
def ledger_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ledger")


@pytest.fixture(scope="module")
def server(ledger_dir: Path) -> Iterator[SimServerProcess]:
    with SimServerProcess.start(ledger_dir, [d.key for d in DEVICES], FP) as srv:
        yield srv


@pytest.fixture
def sim(server: SimServerProcess) -> SimServerProcess:
    """The shared server, reset: memory resident, no faults, call counts zero."""
    httpx.post(f"{server.url}/_sim/reset", trust_env=False).raise_for_status()
    return server


@pytest.fixture
def gpus(ledger_dir: Path) -> FakeGpus:
    machine = FakeGpus(DEVICES)
    machine.add_source(ledger_dir_source(ledger_dir))
    return machine


async def set_faults(srv: SimServerProcess, plan: FaultPlan) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        r = await client.post(f"{srv.url}/_sim/faults", json=plan.to_json())
    r.raise_for_status()


async def wait_for(cond: Callable[[], bool], timeout_s: float = 5.0) -> float:
    """Poll ``cond`` (real time); return the seconds it took."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await anyio.sleep(0.005)
    return time.monotonic() - t0


def sglang(srv: SimServerProcess, **kw: object) -> SGLangAdapter:
    return SGLangAdapter(
        "sg0",
        srv.url,
        process_root=srv.pid,
        **kw,  # type: ignore[arg-type]
    )


async def test_full_cycle_through_http_moves_memory_in_the_ledger(
    sim: SimServerProcess, gpus: FakeGpus
) -> None:
    # The memory is held by the launcher's child, found by walking the real process tree.
    children = {p.pid for p in psutil.Process(sim.pid).children(recursive=True)}
    assert sim.scheduler_pid in children
    holders = {p.pid for p in gpus.snapshot(DEVICES).processes}
    assert holders == {sim.scheduler_pid}
    assert gpus.used(0) == gpus.used(1) == FP.total

    adapter = sglang(sim, timeout_s=5)
    assert adapter.process_root == sim.pid
    await adapter.prepare_release(drain_timeout_s=2.0)
    # Like torch_memory_saver under NVML: the memory moved before the call returned.
    await adapter.release(None)
    assert gpus.used(0) == gpus.used(1) == FP.context
    await adapter.resume(["weights"])
    assert gpus.used(0) == FP.context + FP.weights
    await adapter.resume(["kv_cache", "cuda_graph"])
    assert gpus.used(1) == FP.total
    await adapter.finish_wake()
    # /server_info's memory figures are load-time numbers: a diagnostic, not a gate.
    assert await adapter.memory_usage() == (
        {"weight": 2.0, "kvcache": 4.0, "graph": 0.5, "token_capacity": 4096.0},
    )
    async with httpx.AsyncClient(trust_env=False) as client:
        state = (await client.get(f"{sim.url}/_sim/state")).json()
    assert state["calls"] == {
        "abort": 1,
        "flush_cache": 1,
        "pause": 1,
        "release": 1,
        "resume": 2,
        "continue": 1,
        "server_info": 1,
    }
    await adapter.aclose()


async def test_late_release_returns_200_before_memory_drops(
    sim: SimServerProcess, gpus: FakeGpus
) -> None:
    await set_faults(sim, FaultPlan().on("release", "late_release", delay_s=0.6))
    adapter = sglang(sim)
    await adapter.prepare_release(2.0)
    t0 = time.monotonic()
    await adapter.release(None)
    assert gpus.used(0) == FP.total  # "released", yet nothing moved
    await wait_for(lambda: gpus.used(0) == FP.context)
    assert time.monotonic() - t0 >= 0.55
    await adapter.aclose()


async def test_partial_and_no_release(sim: SimServerProcess, gpus: FakeGpus) -> None:
    plan = FaultPlan().on("release", "partial_release", keep_fraction=0.5, nth=1)
    plan.on("release", "no_release", nth=2)
    await set_faults(sim, plan)
    adapter = sglang(sim)
    await adapter.prepare_release(2.0)
    await adapter.release(["kv_cache"])
    assert gpus.used(0) == FP.total - FP.kv_cache // 2
    await adapter.release(["weights"])
    await anyio.sleep(0.2)
    assert gpus.used(0) == FP.total - FP.kv_cache // 2  # weights never left
    await adapter.aclose()


async def test_noop_resume_and_resume_of_unreleased_tag(
    sim: SimServerProcess, gpus: FakeGpus
) -> None:
    await set_faults(sim, FaultPlan().on("resume", "noop_resume"))
    adapter = sglang(sim)
    await adapter.prepare_release(2.0)
    await adapter.release(["kv_cache"])
    with pytest.raises(EngineError, match=r"HTTP 400.*not released") as info:
        await adapter.resume(["weights"])
    assert type(info.value) is EngineError
    await adapter.resume(["kv_cache"])  # answers 200 ...
    await anyio.sleep(0.2)
    assert gpus.used(0) == FP.total - FP.kv_cache  # ... and the memory did not come back
    await adapter.aclose()


async def test_http_500_and_hang(sim: SimServerProcess, gpus: FakeGpus) -> None:
    plan = FaultPlan().on("release", "error", nth=1).on("release", "hang", delay_s=2.0, nth=2)
    await set_faults(sim, plan)
    adapter = sglang(sim, timeout_s=0.3)
    await adapter.prepare_release(2.0)
    with pytest.raises(EngineError, match="HTTP 500"):
        await adapter.release(None)
    t0 = time.monotonic()
    with pytest.raises(EngineCallTimeout):
        await adapter.release(None)
    assert 0.25 <= time.monotonic() - t0 < 1.9  # the client gave up, not the 2 s hang
    assert gpus.used(0) == FP.total
    await adapter.aclose()


async def test_bounded_drain_against_busy_server(sim: SimServerProcess) -> None:
    plan = FaultPlan().on("abort", "busy", delay_s=0.2, nth=1)
    plan.on("abort", "busy", delay_s=30.0, nth=2)
    await set_faults(sim, plan)
    adapter = sglang(sim)
    t0 = time.monotonic()
    await adapter.prepare_release(drain_timeout_s=3.0)
    assert time.monotonic() - t0 >= 0.19
    await adapter.finish_wake()
    t1 = time.monotonic()
    with pytest.raises(EngineCallTimeout, match="still busy"):
        await adapter.prepare_release(drain_timeout_s=0.3)
    assert 0.29 <= time.monotonic() - t1 < 2.0
    await adapter.aclose()


async def test_vllm_adapter_against_the_server(sim: SimServerProcess, gpus: FakeGpus) -> None:
    adapter = VLLMAdapter("vl0", sim.url, process_root=sim.pid)
    assert await adapter.is_sleeping() is False
    await adapter.prepare_release(1.0)
    await adapter.release(None)
    assert gpus.used(0) == FP.context
    assert await adapter.is_sleeping() is True
    await adapter.resume(["weights"])
    assert gpus.used(0) == FP.context + FP.weights
    assert await adapter.is_sleeping() is True
    await adapter.resume(["kv_cache"])
    assert gpus.used(1) == FP.total
    assert await adapter.is_sleeping() is False
    await adapter.aclose()


async def test_crash_drops_memory_later_and_then_refuses(tmp_path: Path) -> None:
    gpus = FakeGpus(DEVICES)
    gpus.add_source(ledger_dir_source(tmp_path))
    plan = FaultPlan().on("resume", "crash", delay_s=0.3)
    with SimServerProcess.start(tmp_path, [DEVICES[0].key], FP, faults=plan) as srv:
        adapter = sglang(srv)
        await adapter.prepare_release(2.0)
        await adapter.release(["kv_cache"])
        assert gpus.used(0) == FP.total - FP.kv_cache
        t0 = time.monotonic()
        with pytest.raises(EngineUnreachable):
            await adapter.resume(["kv_cache"])
        assert gpus.used(0) == FP.total - FP.kv_cache  # dying, not yet gone
        await wait_for(lambda: gpus.used(0) == 0)
        assert time.monotonic() - t0 >= 0.25  # the memory went with the process, later
        await wait_for(lambda: not psutil.pid_exists(srv.scheduler_pid))
        with pytest.raises(EngineUnreachable):
            await adapter.finish_wake()  # the launcher closed its port
        await wait_for(lambda: not srv.alive())
        await adapter.aclose()


def test_sigkilled_tree_holds_nothing(tmp_path: Path) -> None:
    gpus = FakeGpus(DEVICES)
    gpus.add_source(ledger_dir_source(tmp_path))
    srv = SimServerProcess.start(tmp_path, [DEVICES[1].key], FP)
    assert gpus.used(1) == FP.total
    srv.kill()
    assert list(tmp_path.glob("*.json"))  # the dead child could not clean up ...
    assert gpus.used(1) == 0  # ... and a dead pid holds nothing


def test_ledger_source_rejects_bad_files_and_reused_pids(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ledger_dir"):
        ledger_dir_source(tmp_path / "missing")
    source = ledger_dir_source(tmp_path)
    me = psutil.Process(os.getpid())
    write_ledger(tmp_path, me.pid, me.create_time(), {"GPU-x": 123})
    write_ledger(tmp_path, me.pid + 10**6, 0.0, {"GPU-x": 5})  # no such pid
    assert source() == [(me.pid, "GPU-x", 123)]
    write_ledger(tmp_path, me.pid, me.create_time() - 100, {"GPU-x": 7})  # pid reused
    assert source() == []
    (tmp_path / "9.json").write_text("{truncated")
    with pytest.raises(TransientProbeError, match=r"9\.json"):
        source()


def test_server_cli_refuses_bad_input(tmp_path: Path) -> None:
    from offload_fsm.sim.sim_server import main

    base = ["--ledger-dir", str(tmp_path), "--gpu", "GPU-x"]
    assert main([*base, "--faults", '[{"call": "release", "kind": "nope"}]']) == 2
    assert main([*base, "--footprint-gib", "weights=two"]) == 2
    assert main(["--ledger-dir", str(tmp_path / "nope"), "--gpu", "GPU-x"]) == 2
