"""Ray support (the ``ray`` extra): a probe actor per node, and ``runtime_env`` forwarding.

NVML only sees the GPUs of its own node. On a Ray cluster a :class:`ProbeActor` runs on each
node (``num_cpus=0``, no GPU reserved, pinned with ``NodeAffinitySchedulingStrategy(soft=False)``)
and serves probe rounds from a backend it opens there (NVML/nvidia-smi by default, a fake for
tests). :class:`RayProbe` is the orchestrator's :class:`~offload_fsm.probe.base.ProbeBackend`
over those actors: GPUs carry their node (``GpuDevice.node``, key ``node/uuid``) and one
``probe()`` sends one request to every node involved *at once* and merges the answers into
one :class:`~offload_fsm.probe.base.ProbeRound`.

Failures map to :mod:`offload_fsm.errors` (fail closed, the node is named):

- a dead probe actor or node -> :class:`BackendUnavailable`: the node's GPUs cannot be measured
  and a retry will not bring the actor back, so a gate fails closed at once
  (:class:`~offload_fsm.errors.GateUnmeasurable`). Not :class:`DeviceUnhealthy`: nothing says
  the GPUs themselves are bad, and that error would send the operator to the wrong place.
- an actor Ray is restarting (``max_restarts`` > 0) -> :class:`TransientProbeError` (retried);
- a node that does not answer within ``timeout_s`` -> :class:`ProbeTimeout` (retried by the
  gate until its deadline); a probe error on a node keeps its type (GPU lost stays
  :class:`DeviceUnhealthy`). With several nodes failing the most severe error is raised and
  its message names every node.

``ray`` is imported lazily: importing this module never needs it, and a missing ``ray`` is a
:class:`BackendUnavailable` that names the ``offload-fsm[ray]`` extra. Blocking Ray calls run
in a worker thread (``anyio.to_thread``), so this works on asyncio and trio alike.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.to_thread

from offload_fsm.clock import Clock, RealClock
from offload_fsm.config import parse_positive_gib, parse_positive_seconds
from offload_fsm.errors import (
    BackendUnavailable,
    ConfigError,
    DeviceIdError,
    DeviceUnhealthy,
    ProbeError,
    ProbeTimeout,
    TransientProbeError,
)
from offload_fsm.probe.base import (
    DeviceMemory,
    GpuDevice,
    GpuProcess,
    ProbeBackend,
    ProbeRound,
)
from offload_fsm.probe.fake import FakeBackend, FakeDeviceSpec, FakeGpus, make_devices

RAY_EXTRA = "offload-fsm[ray]"
ACTOR_NAME_PREFIX = "offload-fsm-probe"  # actors are named PREFIX:NODE:TOKEN

# --- runtime_env forwarding (no Ray needed) --------------------------------------------------

# Ray does not pass the driver's environment to actors; MILES drivers forward these.
FORWARDED_ENV = (
    "MILES_MAX_RESIDUAL_GPU_MEM_GB",
    "MILES_TMS_HOOK_MODE",
    "MILES_SKIP_TMS_PAUSE",
    "MILES_SKIP_NODE_PG_PIN",
    "TMS_INIT_ENABLE_CPU_BACKUP",
    "CUDA_DEVICE_MAX_CONNECTIONS",
    "NCCL_NVLS_ENABLE",
)


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Those of :data:`FORWARDED_ENV` that are set in ``environ`` (default ``os.environ``).

    ``MILES_MAX_RESIDUAL_GPU_MEM_GB`` is validated here, in the driver, so a bad value fails
    before any actor starts (:class:`ConfigError` naming it).
    """
    env = os.environ if environ is None else environ
    out = {name: env[name] for name in FORWARDED_ENV if name in env}
    if "MILES_MAX_RESIDUAL_GPU_MEM_GB" in out:
        parse_positive_gib("MILES_MAX_RESIDUAL_GPU_MEM_GB", out["MILES_MAX_RESIDUAL_GPU_MEM_GB"])
    return out


def runtime_env(
    user: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``user``'s runtime_env with :func:`forwarded_env` merged into its ``env_vars``.

    The user's keys are kept. A variable the user set in ``env_vars`` to a *different* value
    than the driver's environment is a :class:`ConfigError` naming it (nothing is clobbered
    silently, either way); the same value is fine. ``user`` is not modified.
    """
    merged: dict[str, Any] = dict(user or {})
    given = merged.get("env_vars", {})
    if not isinstance(given, Mapping):
        raise ConfigError("runtime_env['env_vars']", given, "a mapping of str to str")
    env_vars: dict[str, str] = {}
    for name, value in given.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ConfigError(f"runtime_env['env_vars'][{name!r}]", value, "a str value")
        env_vars[name] = value
    for name, value in forwarded_env(environ).items():
        if name in env_vars and env_vars[name] != value:
            raise ConfigError(
                f"runtime_env['env_vars'][{name!r}]",
                env_vars[name],
                f"{value!r} as the driver's environment sets it (it is forwarded; "
                "leave it out of runtime_env or make the two agree)",
            )
        env_vars[name] = value
    if env_vars or "env_vars" in merged:
        merged["env_vars"] = env_vars
    return merged


# --- lazy ray ----------------------------------------------------------------------------------


def import_ray() -> Any:
    """The ``ray`` module, or :class:`BackendUnavailable` naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailable(
            f"Ray support needs the 'ray' package: pip install '{RAY_EXTRA}' ({exc})"
        ) from exc
    return ray


# --- nodes and backend factories ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeNode:
    """One Ray node to probe: its Ray node id (hex) and the name its GPUs carry."""

    node_id: str
    name: str

    def __post_init__(self) -> None:
        if not self.node_id:
            raise ConfigError("node_id", self.node_id, "a Ray node id (hex)")
        if not self.name or "/" in self.name:
            raise ConfigError("node name", self.name, "a non-empty name without '/'")


NAME_BY = ("hostname", "ip", "id")


def cluster_nodes(*, name_by: str = "hostname", gpu_only: bool = True) -> tuple[ProbeNode, ...]:
    """The alive nodes of the connected Ray cluster (``ray.init`` first).

    ``name_by`` picks the name GPUs carry: ``hostname``, ``ip`` or the full Ray node ``id``;
    names that are not unique are a :class:`ConfigError` (pick another ``name_by``).
    ``gpu_only`` skips nodes that advertise no ``GPU`` resource (a CPU-only head node).
    """
    if name_by not in NAME_BY:
        raise ConfigError("name_by", name_by, " | ".join(NAME_BY))
    ray = import_ray()
    if not ray.is_initialized():
        raise BackendUnavailable("Ray is not initialized: call ray.init() before cluster_nodes()")
    field = {"hostname": "NodeManagerHostname", "ip": "NodeManagerAddress", "id": "NodeID"}
    nodes = []
    for info in ray.nodes():
        if not info.get("Alive"):
            continue
        if gpu_only and not info.get("Resources", {}).get("GPU"):
            continue
        nodes.append(ProbeNode(str(info["NodeID"]), str(info[field[name_by]])))
    names = [n.name for n in nodes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError("name_by", name_by, f"unique node names (repeated: {dupes})")
    if not nodes:
        raise BackendUnavailable(
            "no alive Ray node" + (" with a GPU resource" if gpu_only else "") + " to probe"
        )
    return tuple(nodes)


class BackendFactory(Protocol):
    """Opens a probe backend inside the node's actor. Must be picklable (module-level)."""

    def __call__(self, node: str) -> Awaitable[ProbeBackend]: ...


@dataclass(frozen=True, slots=True)
class OpenBackend:
    """The node's real GPUs: :func:`offload_fsm.probe.select.open_backend` by name
    (``auto`` = NVML, else nvidia-smi)."""

    name: str = "auto"
    smi_executable: str = "nvidia-smi"

    async def __call__(self, node: str) -> ProbeBackend:
        from offload_fsm.probe.select import open_backend

        if self.name == "fake":
            raise ConfigError("backend", self.name, "auto | nvml | smi (use FakeNodeBackend)")
        return await open_backend(self.name, smi_executable=self.smi_executable)


@dataclass(frozen=True, slots=True)
class FakeNodeBackend:
    """``count`` simulated GPUs tagged with the node (tests; drive the ledger with
    :meth:`RayProbe.apply`)."""

    count: int = 8
    spec: FakeDeviceSpec = dataclasses.field(default_factory=FakeDeviceSpec)

    async def __call__(self, node: str) -> ProbeBackend:
        return FakeBackend(FakeGpus(make_devices(self.count, self.spec, node=node)))


# --- the actor -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """An actor's answer: a value, or a probe error by type name (typed on the driver)."""

    value: Any = None
    error_type: str | None = None
    error: str = ""


_ERROR_TYPES: dict[str, type[ProbeError]] = {
    cls.__name__: cls
    for cls in (
        ProbeError,
        BackendUnavailable,
        TransientProbeError,
        ProbeTimeout,
        DeviceUnhealthy,
        DeviceIdError,
    )
}


def _failure(exc: ProbeError) -> Reply:
    name = type(exc).__name__
    if name not in _ERROR_TYPES:  # a subclass defined elsewhere: keep its nearest known kind
        name = next(c.__name__ for c in type(exc).__mro__ if c.__name__ in _ERROR_TYPES)
    return Reply(error_type=name, error=str(exc))


def retag_round(round: ProbeRound, tagged: Mapping[str, GpuDevice]) -> ProbeRound:
    """``round`` with each device replaced by ``tagged[device.key]`` (the node-tagged one)."""

    def dev(d: GpuDevice) -> GpuDevice:
        return tagged.get(d.key, d)

    return dataclasses.replace(
        round,
        memory=tuple(dataclasses.replace(m, device=dev(m.device)) for m in round.memory),
        processes=tuple(dataclasses.replace(p, device=dev(p.device)) for p in round.processes),
        unknown_processes=tuple(
            tagged[k].key if k in tagged else k for k in round.unknown_processes
        ),
    )


class ProbeActor:
    """Serves probe rounds for one node's GPUs. Becomes a Ray actor in :meth:`RayProbe.start`;
    plain async methods, so it also runs (and is tested) without Ray."""

    def __init__(self, node: str, factory: BackendFactory) -> None:
        self.node = node
        self.factory = factory
        self.backend: ProbeBackend | None = None
        self._local: dict[str, GpuDevice] = {}  # tagged key -> the backend's own device
        self._tagged: dict[str, GpuDevice] = {}  # the backend's key -> tagged device

    async def open(self) -> Reply:
        """Open the backend and learn its devices (tagged with this node)."""
        try:
            self.backend = await self.factory(self.node)
            return Reply(await self._load_devices())
        except ProbeError as exc:
            return _failure(exc)

    async def _load_devices(self) -> tuple[GpuDevice, ...]:
        assert self.backend is not None
        out = []
        for d in await self.backend.devices():
            if d.node not in (None, self.node):
                raise DeviceIdError(
                    f"node {self.node!r}: its backend reports {d.label()} of node {d.node!r}"
                )
            tagged = dataclasses.replace(d, node=self.node)
            self._local[tagged.key] = d
            self._tagged[d.key] = tagged
            out.append(tagged)
        return tuple(out)

    async def devices(self) -> Reply:
        if self.backend is None:
            return Reply(error_type="BackendUnavailable", error=f"node {self.node}: not open")
        try:
            return Reply(await self._load_devices())
        except ProbeError as exc:
            return _failure(exc)

    async def probe(self, keys: Sequence[str], timeout_s: float) -> Reply:
        """One round for the devices with these (node-tagged) keys, bounded by ``timeout_s``."""
        if self.backend is None:
            return Reply(error_type="BackendUnavailable", error=f"node {self.node}: not open")
        unknown = [k for k in keys if k not in self._local]
        if unknown:
            return Reply(
                error_type="DeviceIdError",
                error=f"node {self.node}: no GPU {unknown} here (have {sorted(self._local)})",
            )
        try:
            with anyio.fail_after(timeout_s):
                rnd = await self.backend.probe([self._local[k] for k in keys])
        except TimeoutError:
            return Reply(
                error_type="ProbeTimeout",
                error=f"node {self.node}: probe round took over {timeout_s:g} s",
            )
        except ProbeError as exc:
            return _failure(exc)
        return Reply(retag_round(rnd, self._tagged))

    async def apply(self, fn: Callable[[ProbeBackend], Any]) -> Any:
        """``fn(backend)`` on this node (awaited if it returns an awaitable): tests drive a
        fake ledger this way; diagnostics read the backend."""
        assert self.backend is not None, "open() first"
        result = fn(self.backend)
        if isinstance(result, Awaitable):
            result = await result
        return result

    async def process_tree(self, root_pid: int) -> frozenset[int]:
        """``root_pid`` and its descendants in this node's ``/proc``."""
        from offload_fsm.probe.attribution import ProcessTable

        return ProcessTable.snapshot().tree(root_pid)

    async def pid_namespace(self) -> str:
        from offload_fsm.probe.attribution import detect_pid_namespace

        return detect_pid_namespace()

    async def close(self) -> None:
        if self.backend is not None:
            await self.backend.aclose()
            self.backend = None


_ACTOR_CLASS: Any = None


def _remote_actor_class(ray: Any) -> Any:
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        _ACTOR_CLASS = ray.remote(ProbeActor)
    return _ACTOR_CLASS


# --- the driver-side backend -------------------------------------------------------------------

_SEVERITY = (  # the first type present wins when several nodes fail
    DeviceUnhealthy,
    BackendUnavailable,
    DeviceIdError,
    ProbeError,
    TransientProbeError,
    ProbeTimeout,
)


def combine_failures(failures: Mapping[str, ProbeError]) -> ProbeError:
    """One error for several nodes: the most severe type, naming every node's failure."""
    if len(failures) == 1:
        return next(iter(failures.values()))

    def rank(t: type[ProbeError]) -> int:  # by the most specific kind the type is
        return next(_SEVERITY.index(c) for c in t.__mro__ if c in _SEVERITY)

    worst = min((type(e) for e in failures.values()), key=rank)
    text = "; ".join(f"{e}" for _, e in sorted(failures.items()))
    return worst(f"{len(failures)} nodes failed: {text}")


def merge_rounds(
    devices: Sequence[GpuDevice], rounds: Mapping[str, ProbeRound], sampled_at: float
) -> ProbeRound:
    """One round over ``devices`` (in that order) from each node's round."""
    memory: dict[str, DeviceMemory] = {}
    processes: dict[str, list[GpuProcess]] = {}
    for rnd in rounds.values():
        for m in rnd.memory:
            memory[m.device.key] = m
        for p in rnd.processes:
            processes.setdefault(p.device.key, []).append(p)
    missing = [d.label() for d in devices if d.key not in memory]
    if missing:
        raise ProbeError(f"node rounds left out {missing}")
    backends = sorted({r.backend for r in rounds.values()})
    return ProbeRound(
        backend="ray:" + "+".join(backends),
        sampled_at=sampled_at,
        memory=tuple(memory[d.key] for d in devices),
        processes=tuple(p for d in devices for p in processes.get(d.key, ())),
        per_gpu_processes=all(r.per_gpu_processes for r in rounds.values()),
        notes=tuple(f"{node}: {n}" for node, r in sorted(rounds.items()) for n in r.notes),
        unknown_processes=tuple(k for _, r in sorted(rounds.items()) for k in r.unknown_processes),
        unplaced=tuple(u for _, r in sorted(rounds.items()) for u in r.unplaced),
    )


def _map_ray_error(ray: Any, node: str, exc: BaseException) -> ProbeError:
    rex = ray.exceptions
    if isinstance(exc, rex.ActorUnavailableError):  # restarting (max_restarts > 0)
        return TransientProbeError(f"node {node}: probe actor unavailable for now: {exc}")
    if isinstance(exc, (rex.RayActorError, rex.NodeDiedError)):
        return BackendUnavailable(
            f"node {node}: probe actor is dead, its GPUs cannot be measured "
            f"({type(exc).__name__}: {_first_line(exc)})"
        )
    return ProbeError(f"node {node}: probe call failed: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RayProbe:
    """A :class:`ProbeBackend` over one :class:`ProbeActor` per node (see the module doc)."""

    name = "ray"

    def __init__(
        self,
        actors: Mapping[str, Any],
        *,
        timeout_s: float = 2.0,
        clock: Clock | None = None,
        owned: bool = True,
    ) -> None:
        """``actors`` maps node name -> a started ProbeActor handle (use :meth:`start`).
        ``owned``: :meth:`aclose` kills them."""
        if not actors:
            raise ConfigError("actors", dict(actors), "at least one node's probe actor")
        self.actors = dict(actors)
        self.timeout_s = parse_positive_seconds("timeout_s", timeout_s)
        self.clock: Clock = clock or RealClock()
        self.owned = owned
        self.rounds = 0  # probe() calls that reached the nodes

    @classmethod
    async def start(
        cls,
        nodes: Sequence[ProbeNode] | None = None,
        *,
        factory: BackendFactory | None = None,
        timeout_s: float = 2.0,
        start_timeout_s: float = 60.0,
        clock: Clock | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        actor_options: Mapping[str, Any] | None = None,
    ) -> RayProbe:
        """Start one probe actor per node (default :func:`cluster_nodes`) and open each
        node's backend (``factory``, default :class:`OpenBackend`). Every actor has answered
        before this returns; on any failure the started ones are killed and the error names
        the node."""
        ray = import_ray()
        if not ray.is_initialized():
            raise BackendUnavailable("Ray is not initialized: call ray.init() before start()")
        parse_positive_seconds("start_timeout_s", start_timeout_s)
        nodes = tuple(nodes) if nodes is not None else cluster_nodes()
        if not nodes:
            raise ConfigError("nodes", nodes, "at least one node")
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ConfigError("nodes", names, "distinct node names")
        factory = factory or OpenBackend()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor_cls = _remote_actor_class(ray)
        actors: dict[str, Any] = {}
        token = uuid.uuid4().hex[:8]  # names say what each actor is in `ray list actors`
        for node in nodes:
            options: dict[str, Any] = {
                "name": f"{ACTOR_NAME_PREFIX}:{node.name}:{token}",
                "num_cpus": 0,  # a probe must never wait for, or take, a worker slot
                "num_gpus": 0,
                "max_concurrency": 64,
                "scheduling_strategy": NodeAffinitySchedulingStrategy(node.node_id, soft=False),
                **(actor_options or {}),
            }
            if runtime_env is not None:
                options["runtime_env"] = dict(runtime_env)
            actors[node.name] = actor_cls.options(**options).remote(node.name, factory)
        probe = cls(actors, timeout_s=timeout_s, clock=clock)
        try:
            await probe._call_all("open", {n: () for n in actors}, start_timeout_s)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await probe.aclose()
            raise
        return probe

    # --- ProbeBackend -------------------------------------------------------------------------

    async def devices(self) -> tuple[GpuDevice, ...]:
        """Every node's GPUs (node order as started, index order within a node)."""
        replies = await self._call_all("devices", {n: () for n in self.actors}, self.timeout_s)
        return tuple(d for node in self.actors for d in replies[node])

    async def probe(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        """One concurrent round: each node involved gets one request, all sent at once."""
        by_node: dict[str, list[str]] = {}
        for d in devices:
            node = d.node
            if node is None or node not in self.actors:
                raise DeviceIdError(
                    f"{d.label()} ({d.key}): no probe actor for node {node!r} "
                    f"(nodes: {sorted(self.actors)})"
                )
            by_node.setdefault(node, []).append(d.key)
        if not by_node:
            raise DeviceIdError("a probe round needs at least one GPU")
        self.rounds += 1
        calls = {node: (keys, self.timeout_s) for node, keys in by_node.items()}
        # The driver's wait is a little longer than the actor's own bound, so a slow backend
        # is reported by the actor (precisely) and only a hung actor or node hits ours.
        rounds = await self._call_all("probe", calls, self.timeout_s * 1.25)
        return merge_rounds(devices, rounds, self.clock.now())

    async def aclose(self) -> None:
        """Close every node's backend and kill the actors (if this probe started them)."""
        if not self.owned or not self.actors:
            return
        ray = import_ray()
        actors, self.actors = self.actors, {}

        def close_all() -> None:
            refs = []
            for actor in actors.values():
                try:
                    refs.append(actor.close.remote())
                except Exception:  # already dead: nothing to close
                    continue
            ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s)
            for actor in actors.values():
                ray.kill(actor)

        await anyio.to_thread.run_sync(close_all)

    # --- node helpers ---------------------------------------------------------------------------

    async def apply(
        self, node: str, fn: Callable[[ProbeBackend], Any], *, timeout_s: float = 30.0
    ) -> Any:
        """Run ``fn(backend)`` in ``node``'s actor and return its (picklable) result.
        (The first call may import ``fn``'s module on the node: hence its own timeout.)"""
        ray = import_ray()
        actor = self._actor(node)
        try:
            return await anyio.to_thread.run_sync(
                lambda: ray.get(actor.apply.remote(fn), timeout=timeout_s)
            )
        except ray.exceptions.GetTimeoutError:
            raise ProbeTimeout(f"node {node}: apply() took over {timeout_s:g} s") from None
        except ray.exceptions.RayTaskError:
            raise
        except ray.exceptions.RayError as exc:
            raise _map_ray_error(ray, node, exc) from exc

    async def process_tree(self, node: str, root_pid: int) -> frozenset[int]:
        """``root_pid``'s process tree as ``node`` sees it (for ``EngineSpec.pids`` of an
        engine on that node: PIDs only mean something on their own node)."""
        ray = import_ray()
        actor = self._actor(node)
        try:
            return frozenset(
                await anyio.to_thread.run_sync(
                    lambda: ray.get(actor.process_tree.remote(root_pid), timeout=self.timeout_s)
                )
            )
        except ray.exceptions.GetTimeoutError:
            raise ProbeTimeout(
                f"node {node}: process_tree() took over {self.timeout_s:g} s"
            ) from None
        except ray.exceptions.RayError as exc:
            raise _map_ray_error(ray, node, exc) from exc

    def _actor(self, node: str) -> Any:
        try:
            return self.actors[node]
        except KeyError:
            raise ConfigError("node", node, f"one of {sorted(self.actors)}") from None

    async def _call_all(
        self, method: str, args: Mapping[str, tuple[Any, ...]], timeout_s: float
    ) -> dict[str, Any]:
        """``method(*args[node])`` on every node's actor at once; the values, or the
        combined typed error. Blocking Ray calls run on a worker thread."""
        ray = import_ray()
        actors = self.actors

        def run() -> dict[str, Reply | BaseException | None]:
            refs: dict[str, Any] = {}
            out: dict[str, Reply | BaseException | None] = {}
            for node, node_args in args.items():
                try:
                    refs[node] = getattr(actors[node], method).remote(*node_args)
                except Exception as exc:  # a handle Ray already knows is dead
                    out[node] = exc
            ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
            done = set(ready)
            for node, ref in refs.items():
                if ref not in done:
                    out[node] = None  # did not answer in time
                    continue
                try:
                    out[node] = ray.get(ref)
                except Exception as exc:
                    out[node] = exc
            return out

        # abandon_on_cancel: a cancelled caller does not wait; the thread ends by timeout_s.
        results = await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
        values: dict[str, Any] = {}
        failures: dict[str, ProbeError] = {}
        for node, result in results.items():
            if result is None:
                failures[node] = ProbeTimeout(
                    f"node {node}: no answer to {method}() within {timeout_s:g} s"
                )
            elif isinstance(result, BaseException):
                failures[node] = _map_ray_error(ray, node, result)
            elif result.error_type is not None:
                err_cls = _ERROR_TYPES.get(result.error_type, ProbeError)
                text = result.error
                if not text.startswith(f"node {node}"):
                    text = f"node {node}: {text}"
                failures[node] = err_cls(text)
            else:
                values[node] = result.value
        if failures:
            raise combine_failures(failures)
        return values


__all__ = [
    "ACTOR_NAME_PREFIX",
    "FORWARDED_ENV",
    "NAME_BY",
    "RAY_EXTRA",
    "BackendFactory",
    "FakeNodeBackend",
    "OpenBackend",
    "ProbeActor",
    "ProbeNode",
    "RayProbe",
    "Reply",
    "cluster_nodes",
    "combine_failures",
    "forwarded_env",
    "import_ray",
    "merge_rounds",
    "retag_round",
    "runtime_env",
]
