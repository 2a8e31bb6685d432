"""Hard teardown of an engine: kill its whole process tree, then verify the memory came back.

domain.md failure 5: the router was dead, shutdown raised before the engine's processes were
killed, and orphans kept GPU memory. Here the tree is found *first* (one ``/proc`` snapshot:
the memory lives in children such as ``sglang::scheduler``, which a killed parent would
orphan out of reach), then signalled leaves first: SIGTERM, a grace period, SIGKILL for what
is left. Then a real probe gate waits until whole-GPU used memory on the engine's GPUs is
back under the threshold (contexts of killed processes linger briefly), and times out with
the readings when it does not come back (an orphan or a co-tenant still holds it).

Processes are pinned with psutil right after the snapshot, so a PID reused by an unrelated
process is never signalled. A zombie counts as exited (the kernel freed its memory; its
parent reaps it).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import psutil

from offload_fsm.core.errors import ConfigError, EngineError
from offload_fsm.events.bus import Recorder
from offload_fsm.gates.conditions import WakeCondition
from offload_fsm.gates.gate import GateContext, GateResult, run_gate
from offload_fsm.probe.base import GpuDevice, ProbeBackend
from offload_fsm.probe.processes import ProcessTable
from offload_fsm.settings import (
    GatePolicy,
    parse_positive_int,
    parse_positive_seconds,
    threshold_from_env,
)
from offload_fsm.timing.clock import Clock, RealClock

_POLL_S = 0.01


@dataclass(frozen=True, slots=True)
class TeardownResult:
    pids: frozenset[int]  # the tree found before any signal (empty: the root was gone)
    exited_on_term: tuple[int, ...]  # exited within the SIGTERM grace period
    killed: tuple[int, ...]  # needed SIGKILL
    gate: GateResult  # the memory check that followed


def _leaves_first(table: ProcessTable, root_pid: int) -> list[int]:
    """The tree in breadth-first order, reversed: every child before its parent."""
    if root_pid not in table:
        return []
    order = [root_pid]
    i = 0
    while i < len(order):
        order.extend(c for c in table.children(order[i]) if c not in order)
        i += 1
    return order[::-1]


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _signal(procs: Sequence[psutil.Process], sig: int, who: str) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied as exc:
            raise EngineError(
                who, "kill_tree", f"not allowed to signal pid {proc.pid}: {exc}"
            ) from exc


async def _wait_gone(procs: Sequence[psutil.Process], seconds: float) -> list[psutil.Process]:
    """Wait up to ``seconds`` for every process to exit; the survivors."""
    left = [p for p in procs if not _gone(p)]
    with anyio.move_on_after(seconds):
        while left:
            await anyio.sleep(_POLL_S)
            left = [p for p in left if not _gone(p)]
    return left


async def kill_tree_and_verify(
    root_pid: int,
    gpus: Sequence[GpuDevice],
    backend: ProbeBackend,
    timeout_s: float = 30.0,
    *,
    threshold_bytes: int | None = None,
    term_grace_s: float = 5.0,
    kill_grace_s: float = 5.0,
    settle_samples: int = 3,
    engine_id: str | None = None,
    proc_root: str = "/proc",
    clock: Clock | None = None,
    recorder: Recorder | None = None,
) -> TeardownResult:
    """Kill ``root_pid`` and all its descendants, then wait (``timeout_s``) until whole-GPU
    used memory on ``gpus`` is <= ``threshold_bytes`` (default: ``MILES_MAX_RESIDUAL_GPU_MEM_GB``
    or 8 GiB).

    Raises :class:`EngineError` when a process may not be signalled or survives SIGKILL
    (uninterruptible sleep), :class:`~offload_fsm.core.errors.GateTimeout` when the memory does
    not come back (its ``readings`` say how much is left where),
    :class:`~offload_fsm.core.errors.GateUnmeasurable` when it cannot be measured.
    """
    if isinstance(root_pid, bool) or not isinstance(root_pid, int) or root_pid <= 0:
        raise ConfigError("root_pid", root_pid, "a positive pid")
    if root_pid == os.getpid():
        raise ConfigError("root_pid", root_pid, "another process than this one")
    if not gpus:
        raise ConfigError("gpus", gpus, "at least one GPU to verify")
    for name, value in (("term_grace_s", term_grace_s), ("kill_grace_s", kill_grace_s)):
        parse_positive_seconds(name, value)
    parse_positive_int("settle_samples", settle_samples)
    who = engine_id or f"pid {root_pid}"
    if threshold_bytes is None:
        threshold_bytes, _ = threshold_from_env()

    table = ProcessTable.snapshot(proc_root)
    order = _leaves_first(table, root_pid)
    procs = _pin_tree(table, order, root_pid)
    _signal(procs, signal.SIGTERM, who)
    left = await _wait_gone(procs, term_grace_s)
    # Children forked while the tree went down (their parent still alive) go too.
    later = ProcessTable.snapshot(proc_root)
    extra = [pid for p in left for pid in _leaves_first(later, p.pid) if pid not in table]
    left += _pin_tree(later, extra, root_pid)
    _signal(left, signal.SIGKILL, who)
    stuck = await _wait_gone(left, kill_grace_s)
    if stuck:
        raise EngineError(
            who,
            "kill_tree",
            f"pids {sorted(p.pid for p in stuck)} survived SIGKILL for {kill_grace_s:g} s "
            "(uninterruptible sleep in the driver?)",
        )
    killed = {p.pid for p in left}
    gate = await run_gate(
        WakeCondition(tuple(gpus), threshold_bytes),
        devices=tuple(gpus),
        probe=backend,
        policy=GatePolicy(deadline_s=timeout_s, settle_samples=settle_samples),
        clock=clock or RealClock(),
        recorder=recorder,
        ctx=GateContext(engine_id=engine_id),
    )
    return TeardownResult(
        pids=frozenset(order),
        exited_on_term=tuple(p.pid for p in procs if p.pid not in killed),
        killed=tuple(sorted(killed)),
        gate=gate,
    )


def _pin_tree(table: ProcessTable, pids: Sequence[int], root_pid: int) -> list[psutil.Process]:
    """psutil handles for ``pids``. A descendant whose parent changed since the snapshot
    exited and its pid may be someone else's now: it is left alone."""
    procs = []
    for pid in pids:
        info = table.get(pid)
        try:
            proc = psutil.Process(pid)
            if pid != root_pid and info is not None and proc.ppid() != info.ppid:
                continue
        except psutil.NoSuchProcess:
            continue
        procs.append(proc)
    return procs


__all__ = ["TeardownResult", "kill_tree_and_verify"]
