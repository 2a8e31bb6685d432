"""RayProbe on a local Ray started here: two probe actors on the one real node stand for two
nodes ("node-a", "node-b"), each with its own fake GPUs. Skipped only where ``import ray``
fails (install the ``ray`` extra)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial

import anyio
import pytest

ray = pytest.importorskip("ray")

from offload_fsm.compat import miles  # noqa: E402
from offload_fsm.core.errors import (  # noqa: E402
    BackendUnavailable,
    ConfigError,
    DeviceIdError,
    DeviceUnhealthy,
    GateTimeout,
    GateUnmeasurable,
    ProbeTimeout,
)
from offload_fsm.core.lifecycle import State  # noqa: E402
from offload_fsm.engines.trainer import TrainerAdapter  # noqa: E402
from offload_fsm.events.bus import EventBus, Recorder  # noqa: E402
from offload_fsm.events.kinds import Event, GateDecision  # noqa: E402
from offload_fsm.orchestrator.orchestrator import EngineSpec, Orchestrator, OrchestratorConfig  # noqa: E402
from offload_fsm.probe.base import GIB, GpuDevice, ProbeBackend  # noqa: E402
from offload_fsm.probe.processes import detect_pid_namespace  # noqa: E402
from offload_fsm.ray_support import (  # noqa: E402
    ACTOR_NAME_PREFIX,
    FakeNodeBackend,
    OpenBackend,
    ProbeNode,
    RayProbe,
    cluster_nodes,
)
from offload_fsm.settings import GatePolicy  # noqa: E402
from offload_fsm.sim.fake_backend import Fault  # noqa: E402
from tests import ray_node_fns as fns  # noqa: E402

THRESHOLD = 8 * GIB


@pytest.fixture(scope="module")
def node_id() -> Iterator[str]:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        namespace="offload-fsm-tests",
    )
    try:
        yield str(ray.get_runtime_context().get_node_id())
    finally:
        ray.shutdown()


def _two_nodes(node_id: str) -> list[ProbeNode]:
    return [ProbeNode(node_id, "node-a"), ProbeNode(node_id, "node-b")]


@pytest.fixture(scope="module")
def shared(node_id: str) -> Iterator[RayProbe]:
    """Two node actors for the module (starting actors costs ~1 s each on 2 cores)."""
    start = partial(RayProbe.start, _two_nodes(node_id), factory=FakeNodeBackend(2))
    probe = anyio.run(start)
    try:
        yield probe
    finally:
        anyio.run(probe.aclose)


@pytest.fixture
def probe(shared: RayProbe) -> RayProbe:
    """The shared actors with fresh ledgers, no faults and the default timeout."""
    ray.get([a.apply.remote(fns.reset) for a in shared.actors.values()])
    shared.timeout_s = 1.0
    shared.rounds = 0
    return shared


@asynccontextmanager
async def orchestrated(probe: RayProbe) -> AsyncIterator[tuple[Orchestrator, list[Event]]]:
    bus = EventBus()
    events: list[Event] = []
    sub = bus.subscribe("test", capacity=100_000)
    config = OrchestratorConfig(
        threshold_bytes=THRESHOLD,
        wake_gate=GatePolicy(deadline_s=5.0, probe_timeout_s=3.0),
        pid_namespace="foreign",  # PIDs on other nodes mean nothing here (docs/ray.md)
    )
    orch = Orchestrator(probe=probe, recorder=Recorder(bus, "ray-test"), config=config)

    async def collect() -> None:
        async for event in sub:
            events.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        yield orch, events
        bus.close()


async def _trainer_on(orch: Orchestrator, devices: tuple[GpuDevice, ...]) -> list[str]:
    calls: list[str] = []
    adapter = TrainerAdapter(
        "trainer",
        offload=lambda tags: calls.append("offload"),
        onload=lambda tags: calls.append("onload"),
        initially_offloaded=True,
    )
    await orch.register(
        EngineSpec("trainer", adapter, devices, role="trainer", initial=State.SLEPT)
    )
    return calls


async def test_devices_carry_their_node_and_one_round_reaches_every_node_at_once(
    probe: RayProbe,
) -> None:
    probe.timeout_s = 2.0
    devs = await probe.devices()
    assert [d.node for d in devs] == ["node-a", "node-a", "node-b", "node-b"]
    assert len({d.key for d in devs}) == 4
    assert all(d.key.startswith(f"{d.node}/GPU-") for d in devs)
    a0, _, b0, b1 = devs
    await probe.apply("node-a", fns.set_usage(100, 0, 5 * GIB))
    await probe.apply("node-b", fns.set_usage(100, 1, 3 * GIB))  # same pid, other node
    rnd = await probe.probe([b1, a0])
    assert rnd.devices == (b1, a0)
    assert [m.used_bytes for m in rnd.memory] == [3 * GIB, 5 * GIB]
    assert [(p.device.node, p.pid) for p in rnd.processes] == [("node-b", 100), ("node-a", 100)]
    assert rnd.backend == "ray:fake"

    # Both nodes hang 0.6 s in the next round: one concurrent round takes ~0.6 s, one node
    # after the other would take 1.2 s.
    for node in ("node-a", "node-b"):
        await probe.apply(node, fns.inject_next(Fault.hang(0.6)))
    t0 = time.monotonic()
    await probe.probe([a0, b0])
    elapsed = time.monotonic() - t0
    assert 0.6 <= elapsed < 1.15, elapsed  # one after the other: >= 1.2 s
    assert await probe.apply("node-a", fns.rounds) == await probe.apply("node-b", fns.rounds) == 2

    with pytest.raises(DeviceIdError, match="node-c"):
        await probe.probe([GpuDevice(0, "GPU-x", "0:0:0.0", node="node-c")])
    # The MILES helpers take the Ray probe as their backend (GPUs named with their node).
    assert await miles.max_used_gib_async([a0, b1], backend=probe) == 5.0


async def test_orchestrator_gates_a_wake_across_both_nodes(probe: RayProbe) -> None:
    async with orchestrated(probe) as (orch, events):
        devs = await probe.devices()
        on_both = (devs[1], devs[2])  # node-a gpu1 and node-b gpu0
        calls = await _trainer_on(orch, on_both)
        await probe.apply("node-a", fns.set_usage(7, 1, 2 * GIB))  # a small residual: passes
        await orch.wake("trainer")
        assert orch.state("trainer") is State.ACTIVE
        assert calls == ["onload"]
        # Every probe round of the gate reached each node exactly once.
        assert probe.rounds >= GatePolicy().settle_samples
        assert await probe.apply("node-a", fns.rounds) == probe.rounds
        assert await probe.apply("node-b", fns.rounds) == probe.rounds
        await anyio.sleep(0.05)
        opened = [e for e in events if isinstance(e, GateDecision) and e.opened]
        assert opened and opened[0].gpus == tuple(d.key for d in on_both)
        assert opened[0].observed_bytes == (2 * GIB, 0)


async def test_cotenant_on_node_b_keeps_the_gate_closed_until_it_leaves(probe: RayProbe) -> None:
    async with orchestrated(probe) as (orch, _):
        devs = await probe.devices()
        b0 = devs[2]
        calls = await _trainer_on(orch, (devs[0], b0))
        await probe.apply("node-b", fns.set_usage(4242, 0, 20 * GIB))
        orch.config = dataclasses.replace(orch.config, wake_gate=GatePolicy(deadline_s=0.4))
        with pytest.raises(GateTimeout) as info:
            await orch.wake("trainer")
        assert info.value.readings[b0.key] == 20 * GIB
        assert info.value.readings[devs[0].key] == 0
        assert orch.state("trainer") is State.SLEPT and calls == []

        orch.config = dataclasses.replace(orch.config, wake_gate=GatePolicy(deadline_s=5.0))
        await probe.apply("node-b", fns.leave_after(4242, 0, 0.3))
        t0 = time.monotonic()
        await orch.wake("trainer")
        assert time.monotonic() - t0 >= 0.3
        assert orch.state("trainer") is State.ACTIVE and calls == ["onload"]


async def test_a_slow_or_hung_node_is_bounded_by_the_timeout(probe: RayProbe) -> None:
    probe.timeout_s = 0.2
    devs = await probe.devices()
    await probe.apply("node-b", fns.inject_next(Fault.hang(5.0)))  # a slow backend
    t0 = time.monotonic()
    with pytest.raises(ProbeTimeout, match="node-b"):
        await probe.probe([devs[0], devs[2]])
    assert time.monotonic() - t0 < 1.0
    probe.actors["node-a"].apply.remote(fns.block_loop(1.0))  # a hung actor
    t0 = time.monotonic()
    with pytest.raises(ProbeTimeout, match="node-a: no answer to probe"):
        await probe.probe([devs[0], devs[2]])
    assert time.monotonic() - t0 < 1.0
    await probe.apply("node-b", fns.inject_next(Fault.gpu_lost()))
    await probe.apply("node-a", fns.rounds)  # waits for node-a's loop to run again
    with pytest.raises(DeviceUnhealthy, match="node-b"):
        await probe.probe([devs[0], devs[2]])


async def test_a_killed_actor_fails_closed_and_is_named(node_id: str, probe: RayProbe) -> None:
    # node-a is the shared actor; node-c is started here to be killed.
    own = await RayProbe.start([ProbeNode(node_id, "node-c")], factory=FakeNodeBackend(1))
    mixed = RayProbe({**probe.actors, **own.actors}, timeout_s=1.0, owned=False)
    async with orchestrated(mixed) as (orch, _):
        devs = await mixed.devices()
        a0, c0 = devs[0], devs[-1]
        assert c0.node == "node-c"
        calls = await _trainer_on(orch, (a0, c0))
        ray.kill(own.actors["node-c"])
        _wait_until_dead(own.actors["node-c"])
        with pytest.raises(BackendUnavailable, match="node-c: probe actor is dead"):
            await mixed.probe([c0])
        with pytest.raises(GateUnmeasurable, match="node-c"):
            await orch.wake("trainer")
        assert orch.state("trainer") is State.SLEPT and calls == []
        # GPUs on the live node are still measured.
        rnd = await mixed.probe([a0])
        assert [m.used_bytes for m in rnd.memory] == [0]
        with pytest.raises(BackendUnavailable, match="node-c"):
            await mixed.devices()
    await own.aclose()  # killing a dead actor again is harmless


def _wait_until_dead(actor: object, timeout_s: float = 30.0) -> None:
    """``ray.kill`` is asynchronous: a call sent just after it may still be answered. Wait
    until Ray itself reports the actor dead (RayActorError), within ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            ray.get(actor.devices.remote(), timeout=5)  # type: ignore[attr-defined]
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            continue
        time.sleep(0.1)
    raise AssertionError(f"Ray still reports the killed actor alive after {timeout_s} s")


def _alive(node: str) -> list[str]:
    return [n for n in ray.util.list_named_actors() if n.startswith(f"{ACTOR_NAME_PREFIX}:{node}:")]


class _NoDriverOnB:
    """A node without a GPU driver next to a good one (pickled by reference)."""

    async def __call__(self, node: str) -> ProbeBackend:
        if node == "good":
            return await FakeNodeBackend(1)(node)
        return await OpenBackend("smi", smi_executable="/nonexistent/nvidia-smi")(node)


async def test_start_fails_closed_and_kills_what_it_started(node_id: str) -> None:
    nodes = [ProbeNode(node_id, "good"), ProbeNode(node_id, "gpu-less")]
    with pytest.raises(BackendUnavailable, match=r"node gpu-less:.*nvidia-smi") as info:
        await RayProbe.start(nodes, factory=_NoDriverOnB(), timeout_s=2.0)
    assert "node good" not in str(info.value)
    with anyio.fail_after(10):
        while _alive("good") or _alive("gpu-less"):  # noqa: ASYNC110 (Ray's actor table)
            await anyio.sleep(0.05)


def test_cluster_nodes_names_the_alive_nodes(node_id: str) -> None:
    import socket

    assert cluster_nodes(name_by="id", gpu_only=False) == (ProbeNode(node_id, node_id),)
    (by_host,) = cluster_nodes(gpu_only=False)
    assert by_host.node_id == node_id and by_host.name == socket.gethostname()
    with pytest.raises(BackendUnavailable, match="GPU resource"):
        cluster_nodes()  # this Ray node advertises no GPU
    with pytest.raises(ConfigError, match="name_by"):
        cluster_nodes(name_by="rack")


async def test_node_side_process_tree_and_namespace(probe: RayProbe) -> None:
    tree = await probe.process_tree("node-a", os.getpid())
    assert os.getpid() in tree  # both "nodes" are this machine here
    assert await probe.apply("node-a", fns.rounds) == 0
    ns = ray.get(probe.actors["node-b"].pid_namespace.remote())
    assert ns == detect_pid_namespace()
    with pytest.raises(ConfigError, match="node-z"):
        await probe.process_tree("node-z", 1)
