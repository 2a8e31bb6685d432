"""Ray support (the ``ray`` extra): a probe actor per node, and ``runtime_env`` forwarding.

NVML only sees the GPUs of its own node. On a Ray cluster a :class:`ProbeActor` runs on each
node (``num_cpus=0``, no GPU reserved, pinned with ``NodeAffinitySchedulingStrategy(soft=False)``)
and serves probe rounds from a backend it opens there (NVML/nvidia-smi by default, a fake for
tests). :class:`RayProbe` is the orchestrator's :class:`~offload_fsm.probe.base.ProbeBackend`
over those actors: GPUs carry their node (``GpuDevice.node``, key ``node/uuid``) and one
``probe()`` sends one request to every node involved *at once* and merges the answers into
one :class:`~offload_fsm.probe.base.ProbeRound`.

Failures map to :mod:`offload_fsm.core.errors` (fail closed, the node is named):

- a dead probe actor or node -> :class:`BackendUnavailable`: the node's GPUs cannot be measured
  and a retry will not bring the actor back, so a gate fails closed at once
  (:class:`~offload_fsm.core.errors.GateUnmeasurable`). Not :class:`DeviceUnhealthy`: nothing says
  the GPUs themselves are bad, and that error would send the operator to the wrong place.
- an actor Ray is restarting (``max_restarts`` > 0) -> :class:`TransientProbeError` (retried);
- a node that does not answer within ``timeout_s`` -> :class:`ProbeTimeout` (retried by the
  gate until its deadline); a probe error on a node keeps its type (GPU lost stays
  :class:`DeviceUnhealthy`). With several nodes failing the most severe error is raised and
  its message names every node.

``ray`` is imported lazily: importing this package, or any module in it, never needs it,
and a missing ``ray`` is a :class:`BackendUnavailable` that names the ``offload-fsm[ray]``
extra. Blocking Ray calls run in a worker thread (``anyio.to_thread``), so this works on
asyncio and trio alike.

Modules: :mod:`.actor` (the per-node :class:`ProbeActor`), :mod:`.ray_probe` (:class:`RayProbe`,
the driver side), :mod:`.nodes` (which nodes, by what name), :mod:`.node_backends` (what each
actor opens), :mod:`.replies` (actor answers and typed failures), :mod:`.rounds` (node-tagged
and merged rounds), :mod:`.env_forwarding` (``runtime_env``), :mod:`.lazy_ray`.
"""

from __future__ import annotations

from offload_fsm.ray_support.actor import ProbeActor
from offload_fsm.ray_support.env_forwarding import FORWARDED_ENV, forwarded_env, runtime_env
from offload_fsm.ray_support.lazy_ray import RAY_EXTRA, import_ray
from offload_fsm.ray_support.node_backends import BackendFactory, FakeNodeBackend, OpenBackend
from offload_fsm.ray_support.nodes import NAME_BY, ProbeNode, cluster_nodes
from offload_fsm.ray_support.ray_probe import ACTOR_NAME_PREFIX, RayProbe
from offload_fsm.ray_support.replies import Reply, combine_failures
from offload_fsm.ray_support.rounds import merge_rounds, retag_round

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
