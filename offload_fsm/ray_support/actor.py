"""The per-node probe actor: serves probe rounds for one node's GPUs.

Ray pickles the actor class by reference to this module, so the node imports it by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from offload_fsm.core.errors import DeviceIdError, ProbeError
from offload_fsm.probe.base import GpuDevice, ProbeBackend
from offload_fsm.ray_support.node_backends import BackendFactory
from offload_fsm.ray_support.replies import Reply, _failure
from offload_fsm.ray_support.rounds import retag_round


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
        from offload_fsm.probe.processes import ProcessTable

        return ProcessTable.snapshot().tree(root_pid)

    async def pid_namespace(self) -> str:
        from offload_fsm.probe.processes import detect_pid_namespace

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
