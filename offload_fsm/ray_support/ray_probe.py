"""The driver-side backend: :class:`RayProbe` fans one probe round out to every node's actor."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.to_thread

from offload_fsm.core.errors import (
    BackendUnavailable,
    ConfigError,
    DeviceIdError,
    ProbeError,
    ProbeTimeout,
)
from offload_fsm.probe.base import GpuDevice, ProbeBackend, ProbeRound
from offload_fsm.ray_support.actor import _remote_actor_class
from offload_fsm.ray_support.lazy_ray import import_ray
from offload_fsm.ray_support.node_backends import BackendFactory, OpenBackend
from offload_fsm.ray_support.nodes import ProbeNode, cluster_nodes
from offload_fsm.ray_support.replies import (
    _ERROR_TYPES,
    Reply,
    _map_ray_error,
    combine_failures,
)
from offload_fsm.ray_support.rounds import merge_rounds
from offload_fsm.settings import parse_positive_seconds
from offload_fsm.timing.clock import Clock, RealClock

ACTOR_NAME_PREFIX = "offload-fsm-probe"  # actors are named PREFIX:NODE:TOKEN


class RayProbe:
    """A :class:`ProbeBackend` over one :class:`ProbeActor` per node (failures: see
    :mod:`offload_fsm.ray_support`)."""

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
