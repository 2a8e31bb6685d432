"""Drop-in for MILES's residual probe (``miles.utils.gpu_probe``), on offload_fsm's parsers.

A MILES call site swaps one import and keeps every call and every answer::

    from offload_fsm.compat.miles import query_process_tree_gpu_used_gb

Upstream: rlops/miles ``miles/utils/gpu_probe.py`` at ac0750567b1170adaf61cfaaa9965835aef906cf;
its caller is ``SGLangEngine.log_post_sleep_residual_diagnostics``
(``miles/backends/sglang_utils/sglang_engine.py``), which passes
``getattr(self.process, "pid", None)`` and logs "n/a" for None. Same names, signatures and
defaults, synchronous, GiB as MiB / 1024. The answer is a *diagnostic*, the engine's worst
single-GPU resident memory: per GPU the tree's rows are summed, then the max across GPUs is
taken (TP>1 engines are never summed across cards). None means "cannot measure", never 0:

- ``root_pid`` None, ``nvidia-smi`` not on PATH, or every query failed, exited non-zero or
  passed ``timeout_s`` (each query is killed at ``timeout_s``);
- no process of the tree in the listing (a foreign PID namespace: see below);
- rows that cannot be read (``[N/A]`` usage, blank or short rows) are skipped, as upstream
  skips them: the answer counts the rows that have a figure (None when none of the tree's do).

Where the GPU-aware query (``gpu_bus_id,pid,used_memory``) fails, the legacy two-column query
(``pid,used_memory``) is tried once, with a warning: it cannot place rows on GPUs, so the
answer is the tree's sum over all GPUs, an upper bound. Where ``/proc`` cannot be read, the
tree is the root pid alone.

Differences, each safer and each with its way back (docs/migrating.md lists them):

- In a container with its own PID namespace the tree's pids are not the pids nvidia-smi
  lists; a match would be a stranger's process. Upstream relies on there being no match; here
  a detected foreign namespace answers None outright. ``pid_namespace="host"`` (keyword only)
  matches pids as upstream does.
- A bad ``root_pid`` (not an int, or <= 0: pid 0's "tree" is the whole machine) or
  ``timeout_s`` (not positive and finite) raises :class:`~offload_fsm.core.errors.ConfigError`
  naming it instead of measuring the wrong thing or never returning.
- Rows nvidia-smi never prints are skipped where upstream would count them: a bus id that is
  not a PCI address, a negative or non-finite figure, more columns than were asked for.

offload_fsm's own gates (the whole-GPU wake gate, the engine release gate, kill-and-verify)
live in :mod:`offload_fsm.compat.gates` and are re-exported here for earlier callers.
"""

from __future__ import annotations

import logging
from collections.abc import Set

from offload_fsm.compat._smi import CSV, check_timeout, run_smi, smi_available
from offload_fsm.compat.gates import (
    DEFAULT_RELEASE_LIMIT_GIB,
    close_default_backend,
    default_backend,
    kill_tree_and_verify,
    kill_tree_and_verify_async,
    max_process_residual_gib,
    max_process_residual_gib_async,
    max_used_gib,
    max_used_gib_async,
    wait_for_engine_release,
    wait_for_engine_release_async,
    wait_for_residual,
    wait_for_residual_async,
)
from offload_fsm.core.errors import ConfigError
from offload_fsm.probe.base import GIB
from offload_fsm.probe.processes import (
    FOREIGN,
    PID_NAMESPACES,
    ProcessTable,
    detect_pid_namespace,
)
from offload_fsm.probe.smi import parse_app_rows

logger = logging.getLogger(__name__)

GPU_AWARE_QUERY = "--query-compute-apps=gpu_bus_id,pid,used_memory"
LEGACY_QUERY = "--query-compute-apps=pid,used_memory"


def _check_pid(root_pid: object) -> int:
    if isinstance(root_pid, bool) or not isinstance(root_pid, int) or root_pid <= 0:
        raise ConfigError("root_pid", root_pid, "a positive pid (or None: cannot measure)")
    return root_pid


def build_process_tree(root_pid: int, proc_root: str = "/proc") -> set[int]:
    """``root_pid`` and every descendant, from one read of ``proc_root``.

    The GPU memory of an SGLang engine lives in children of the pid MILES holds (the spawn
    parent), so the whole tree is what is measured. The root is always in the answer, also
    when it is gone or ``proc_root`` cannot be read (then it is the whole answer)."""
    root = _check_pid(root_pid)
    table = ProcessTable.snapshot(proc_root)
    tree = {root}
    if not table.available:
        return tree
    stack = [root]
    while stack:
        for child in table.children(stack.pop()):
            if child not in tree:
                tree.add(child)
                stack.append(child)
    return tree


def parse_compute_apps_per_gpu_max_gb(nvidia_csv: str, tree_pids: Set[int]) -> float | None:
    """GiB: ``tree_pids``' rows of ``gpu_bus_id,pid,used_memory`` output summed per GPU, the
    max across GPUs. None when no readable row is the tree's."""
    rows, _skipped = parse_app_rows(nvidia_csv)
    per_gpu: dict[str | None, int] = {}
    for row in rows:
        if row.pid in tree_pids and row.used_bytes is not None:
            per_gpu[row.bus_id] = per_gpu.get(row.bus_id, 0) + row.used_bytes
    if not per_gpu:
        return None
    return max(per_gpu.values()) / GIB


def parse_compute_apps_used_gb(nvidia_csv: str, tree_pids: Set[int]) -> float | None:
    """GiB: ``tree_pids``' rows of legacy ``pid,used_memory`` output summed (over every GPU:
    this output does not say which). None when no readable row is the tree's."""
    rows, _skipped = parse_app_rows(nvidia_csv, legacy=True)
    used = [r.used_bytes for r in rows if r.pid in tree_pids and r.used_bytes is not None]
    if not used:
        return None
    return sum(used) / GIB


def query_process_tree_gpu_used_gb(
    root_pid: int | None,
    timeout_s: float = 5.0,
    proc_root: str = "/proc",
    *,
    pid_namespace: str | None = None,
) -> float | None:
    """Max per-GPU resident GiB of ``root_pid``'s process tree, or None when it cannot be
    measured (see the module doc). ``pid_namespace``: "host", "foreign" or "unknown";
    None detects it from ``proc_root``."""
    if root_pid is None:
        return None
    root = _check_pid(root_pid)
    timeout = check_timeout(timeout_s)
    if pid_namespace is not None and pid_namespace not in PID_NAMESPACES:
        raise ConfigError("pid_namespace", pid_namespace, f"one of {', '.join(PID_NAMESPACES)}")
    if not smi_available():
        return None
    namespace = pid_namespace or detect_pid_namespace(proc_root)
    if namespace == FOREIGN:
        logger.debug("pid %d lives in a foreign PID namespace: nvidia-smi pids are not ours", root)
        return None
    tree = build_process_tree(root, proc_root=proc_root)
    out = run_smi([GPU_AWARE_QUERY, CSV], timeout)
    if out is not None:
        return parse_compute_apps_per_gpu_max_gb(out, tree)
    logger.warning(
        "nvidia-smi could not list processes per GPU; measuring with the legacy pid,used_memory "
        "query instead (summed over all GPUs: an upper bound for a multi-GPU engine)"
    )
    out = run_smi([LEGACY_QUERY, CSV], timeout)
    if out is None:
        return None
    return parse_compute_apps_used_gb(out, tree)


__all__ = [
    "DEFAULT_RELEASE_LIMIT_GIB",
    "build_process_tree",
    "close_default_backend",
    "default_backend",
    "kill_tree_and_verify",
    "kill_tree_and_verify_async",
    "max_process_residual_gib",
    "max_process_residual_gib_async",
    "max_used_gib",
    "max_used_gib_async",
    "parse_compute_apps_per_gpu_max_gb",
    "parse_compute_apps_used_gb",
    "query_process_tree_gpu_used_gb",
    "wait_for_engine_release",
    "wait_for_engine_release_async",
    "wait_for_residual",
    "wait_for_residual_async",
]
