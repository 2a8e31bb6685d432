"""Ray support without Ray: env forwarding, the probe actor as a plain object, round merging."""

from __future__ import annotations

import sys

import pytest

from offload_fsm.core.errors import (
    BackendUnavailable,
    ConfigError,
    DeviceIdError,
    DeviceUnhealthy,
    ProbeError,
    ProbeTimeout,
    TransientProbeError,
)
from offload_fsm.probe.base import GIB, ProbeBackend, ProbeRound
from offload_fsm.ray_support import (
    FORWARDED_ENV,
    FakeNodeBackend,
    OpenBackend,
    ProbeActor,
    ProbeNode,
    Reply,
    combine_failures,
    forwarded_env,
    import_ray,
    merge_rounds,
    retag_round,
    runtime_env,
)
from offload_fsm.sim.fake_backend import FakeBackend, Fault
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus

# --- forwarded_env / runtime_env -----------------------------------------------------------


def test_forwarded_env_takes_exactly_the_set_variables() -> None:
    env = {
        "MILES_MAX_RESIDUAL_GPU_MEM_GB": "7.5",
        "NCCL_NVLS_ENABLE": "0",
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",
        "HOME": "/root",
        "MILES_OTHER": "x",
    }
    assert forwarded_env(env) == {
        "MILES_MAX_RESIDUAL_GPU_MEM_GB": "7.5",
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",
        "NCCL_NVLS_ENABLE": "0",
    }
    assert forwarded_env({}) == {}
    every = {name: "1" for name in FORWARDED_ENV}
    assert forwarded_env(every) == every
    assert len(FORWARDED_ENV) == 7


def test_forwarded_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FORWARDED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MILES_SKIP_TMS_PAUSE", "1")
    monkeypatch.setenv("TMS_INIT_ENABLE_CPU_BACKUP", "")  # set, even if empty
    assert forwarded_env() == {"MILES_SKIP_TMS_PAUSE": "1", "TMS_INIT_ENABLE_CPU_BACKUP": ""}


@pytest.mark.parametrize("bad", ["", "zero", "0", "-3", "nan", "inf", "8e9"])
def test_forwarded_env_refuses_a_bad_threshold(bad: str) -> None:
    with pytest.raises(ConfigError, match="MILES_MAX_RESIDUAL_GPU_MEM_GB"):
        forwarded_env({"MILES_MAX_RESIDUAL_GPU_MEM_GB": bad})


def test_runtime_env_merges_without_touching_the_users_dict() -> None:
    user = {"pip": ["x"], "env_vars": {"MY_VAR": "1", "NCCL_NVLS_ENABLE": "0"}}
    environ = {"NCCL_NVLS_ENABLE": "0", "MILES_TMS_HOOK_MODE": "pause"}
    merged = runtime_env(user, environ=environ)
    assert merged == {
        "pip": ["x"],
        "env_vars": {"MY_VAR": "1", "NCCL_NVLS_ENABLE": "0", "MILES_TMS_HOOK_MODE": "pause"},
    }
    assert user["env_vars"] == {"MY_VAR": "1", "NCCL_NVLS_ENABLE": "0"}
    assert runtime_env(None, environ={}) == {}
    assert runtime_env({"working_dir": "."}, environ={}) == {"working_dir": "."}
    assert runtime_env(None, environ=environ) == {"env_vars": environ}


def test_runtime_env_conflict_names_the_variable() -> None:
    user = {"env_vars": {"MILES_SKIP_NODE_PG_PIN": "0"}}
    with pytest.raises(ConfigError, match="MILES_SKIP_NODE_PG_PIN") as info:
        runtime_env(user, environ={"MILES_SKIP_NODE_PG_PIN": "1"})
    assert info.value.value == "0"
    assert "'1'" in str(info.value)


def test_runtime_env_refuses_malformed_env_vars() -> None:
    with pytest.raises(ConfigError, match="env_vars"):
        runtime_env({"env_vars": ["A=1"]}, environ={})
    with pytest.raises(ConfigError, match="'A'"):
        runtime_env({"env_vars": {"A": 1}}, environ={})


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes ``import ray`` raise ImportError
    with pytest.raises(BackendUnavailable, match=r"offload-fsm\[ray\]"):
        import_ray()


def test_probe_node_names_are_checked() -> None:
    assert ProbeNode("abc", "node-a").name == "node-a"
    for bad in ("", "a/b"):
        with pytest.raises(ConfigError, match="node name"):
            ProbeNode("abc", bad)
    with pytest.raises(ConfigError, match="node_id"):
        ProbeNode("", "a")


# --- the actor as a plain object ----------------------------------------------------------


async def test_actor_tags_devices_and_rounds_with_its_node() -> None:
    actor = ProbeActor("node-b", FakeNodeBackend(2))
    opened = await actor.open()
    assert opened.error_type is None
    devs = opened.value
    assert [d.node for d in devs] == ["node-b", "node-b"]
    assert devs[1].key.startswith("node-b/GPU-")
    backend = actor.backend
    assert isinstance(backend, FakeBackend)
    backend.gpus.set_usage(7, 1, 3 * GIB)
    reply = await actor.probe([devs[1].key], 1.0)
    rnd = reply.value
    assert isinstance(rnd, ProbeRound)
    assert rnd.memory_of(devs[1]).used_bytes == 3 * GIB
    assert [(p.pid, p.device.key) for p in rnd.processes] == [(7, devs[1].key)]
    await actor.close()
    assert backend.closed


class _UntaggedFactory:
    """A backend that knows nothing of nodes (as NVML): the actor tags its devices."""

    def __init__(self, node_of_devices: str | None = None) -> None:
        self.gpus = FakeGpus(make_devices(2, node=node_of_devices))

    async def __call__(self, node: str) -> ProbeBackend:
        return FakeBackend(self.gpus)


async def test_actor_tags_an_untagged_backend_and_maps_keys_back() -> None:
    factory = _UntaggedFactory()
    factory.gpus.set_usage(5, 0, 2 * GIB)
    factory.gpus.hide_processes(1)
    actor = ProbeActor("n1", factory)
    devs = (await actor.open()).value
    assert devs[0].key == "n1/" + factory.gpus.devices[0].uuid
    rnd = (await actor.probe([d.key for d in devs], 1.0)).value
    assert [m.device for m in rnd.memory] == list(devs)
    assert rnd.processes[0].device == devs[0]
    assert rnd.unknown_processes == (devs[1].key,)
    assert not rnd.processes_known(devs[1]) and rnd.processes_known(devs[0])


async def test_actor_errors_are_replies_with_their_type() -> None:
    actor = ProbeActor("n1", _UntaggedFactory(node_of_devices="elsewhere"))
    reply = await actor.open()
    assert reply.error_type == "DeviceIdError" and "elsewhere" in reply.error

    actor = ProbeActor("n1", FakeNodeBackend(1))
    assert (await actor.probe(["n1/x"], 1.0)).error_type == "BackendUnavailable"  # not open
    devs = (await actor.open()).value
    assert (await actor.probe(["n1/GPU-nope"], 1.0)).error_type == "DeviceIdError"
    backend = actor.backend
    assert isinstance(backend, FakeBackend)
    backend.inject(backend.rounds + 1, Fault.gpu_lost())
    reply = await actor.probe([devs[0].key], 1.0)
    assert reply.error_type == "DeviceUnhealthy" and "lost" in reply.error
    backend.inject(backend.rounds + 1, Fault.hang(5.0))
    reply = await actor.probe([devs[0].key], 0.05)
    assert reply.error_type == "ProbeTimeout" and "n1" in reply.error


async def test_open_backend_factory_fails_closed_without_gpus() -> None:
    actor = ProbeActor("n1", OpenBackend("smi", smi_executable="/nonexistent/nvidia-smi"))
    reply = await actor.open()
    assert reply == Reply(error_type="BackendUnavailable", error=reply.error)
    assert "/nonexistent/nvidia-smi" in reply.error
    with pytest.raises(ConfigError):
        await OpenBackend("fake")("n1")


async def test_actor_apply_runs_sync_and_async_functions() -> None:
    actor = ProbeActor("n1", FakeNodeBackend(1))
    await actor.open()
    assert await actor.apply(lambda b: b.name) == "fake"

    async def devices(b: ProbeBackend) -> int:
        return len(await b.devices())

    assert await actor.apply(devices) == 1


# --- merging and errors -------------------------------------------------------------------


def _rounds() -> tuple[FakeGpus, FakeGpus]:
    a = FakeGpus(make_devices(2, node="a"))
    b = FakeGpus(make_devices(2, node="b"))
    a.set_usage(1, 1, 4 * GIB)
    b.set_usage(1, 0, 9 * GIB)  # the same pid number on another node: another process
    return a, b


def test_merge_keeps_the_asked_order_and_node_identity() -> None:
    a, b = _rounds()
    asked = [b.devices[0], a.devices[1], a.devices[0]]
    ra = a.snapshot([a.devices[1], a.devices[0]])
    rb = dataclasses_replace_notes(b.snapshot([b.devices[0]]), ("v1 memory semantics",))
    merged = merge_rounds(asked, {"a": ra, "b": rb}, sampled_at=12.5)
    assert merged.devices == tuple(asked)
    assert [m.used_bytes for m in merged.memory] == [9 * GIB, 4 * GIB, 0]
    assert merged.sampled_at == 12.5 and merged.backend == "ray:fake"
    assert merged.notes == ("b: v1 memory semantics",)
    on_b = merged.processes_on(b.devices[0])
    assert [(p.pid, p.used_bytes) for p in on_b] == [(1, 9 * GIB)]
    with pytest.raises(ProbeError, match="left out"):
        merge_rounds([b.devices[1]], {"b": rb}, sampled_at=0.0)


def dataclasses_replace_notes(rnd: ProbeRound, notes: tuple[str, ...]) -> ProbeRound:
    import dataclasses

    return dataclasses.replace(rnd, notes=notes)


def test_retag_round_maps_every_device_reference() -> None:
    local = FakeGpus(make_devices(1))
    local.set_usage(3, 0, GIB)
    local.hide_processes(0)
    tagged_dev = make_devices(1, node="x")[0]
    rnd = retag_round(local.snapshot(local.devices), {local.devices[0].key: tagged_dev})
    assert rnd.memory[0].device == tagged_dev
    assert rnd.unknown_processes == (tagged_dev.key,)


def test_combine_failures_picks_the_most_severe_and_names_every_node() -> None:
    one = ProbeTimeout("node a: slow")
    assert combine_failures({"a": one}) is one
    err = combine_failures(
        {"a": ProbeTimeout("node a: slow"), "b": BackendUnavailable("node b: dead")}
    )
    assert type(err) is BackendUnavailable
    assert "node a: slow" in str(err) and "node b: dead" in str(err)
    err = combine_failures(
        {"a": DeviceUnhealthy("node a: lost"), "b": BackendUnavailable("node b: dead")}
    )
    assert type(err) is DeviceUnhealthy
    err = combine_failures({"a": ProbeTimeout("x"), "b": TransientProbeError("y")})
    assert type(err) is TransientProbeError
    err = combine_failures({"a": DeviceIdError("x"), "b": ProbeError("y")})
    assert type(err) is DeviceIdError
