"""The Ray nodes to probe: a node id with the name its GPUs carry, read from the cluster."""

from __future__ import annotations

from dataclasses import dataclass

from offload_fsm.core.errors import BackendUnavailable, ConfigError
from offload_fsm.ray_support.lazy_ray import import_ray


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
