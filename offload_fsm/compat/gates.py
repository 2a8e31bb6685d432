"""offload_fsm's own gates with MILES's vocabulary, backed by offload_fsm's probes.

These are stricter than the upstream probes: they gate instead of logging, and they never
answer "cannot measure" with a number. :mod:`offload_fsm.compat.miles` (the upstream drop-in)
re-exports them; the MILES / RLix drop-ins are :mod:`offload_fsm.compat.miles` and
:mod:`offload_fsm.compat.rlix`.

    from offload_fsm.compat.gates import wait_for_residual, max_used_gib

Every function has a sync form (MILES calls these from sync code, e.g. inside Ray actors;
each runs an event loop of its own, so never call one from inside a running loop) and an
``*_async`` form. ``gpus`` are physical GPU ids as ``nvidia-smi`` numbers them (NVML index),
UUIDs or PCI bus ids, as a sequence or a ``"0,1"`` string: never CUDA ordinals. With a
backend that sees several nodes (:class:`~offload_fsm.ray_support.RayProbe`) an index is
ambiguous: pass :class:`~offload_fsm.probe.base.GpuDevice` objects or ``node/uuid`` keys.
An unknown or repeated id is a :class:`~offload_fsm.core.errors.DeviceIdError`, never a skipped
gate.

``backend`` defaults to one shared backend per process (NVML, else nvidia-smi), opened on
first use (:func:`default_backend`, :func:`close_default_backend`).

Semantics:

- :func:`max_process_residual_gib` is a *diagnostic*: the max over ``gpus`` of the process
  tree's summed usage per GPU (never the sum across GPUs). ``None`` when it cannot be
  measured: a GPU where no process of the tree is listed, usage the driver hides, a foreign
  PID namespace (container), a root that is gone, or a probe that failed or timed out.
  A lost GPU (:class:`~offload_fsm.core.errors.DeviceUnhealthy`) and a bad id still raise.
- :func:`max_used_gib` is what the wake gate compares: whole-GPU used memory (every process,
  co-tenants included), max over ``gpus``. It never answers 0 for "unknown": it raises a
  :class:`~offload_fsm.core.errors.ProbeError`.
- :func:`wait_for_residual` is the real wake gate (``offload_fsm.gates.gate.run_gate`` with
  ``WakeCondition``): max used <= threshold on every GPU for ``settle`` rounds in a row, or
  :class:`~offload_fsm.core.errors.GateTimeout` (with the readings) at ``timeout_s``.
- :func:`wait_for_engine_release` gates on one engine's own residual after its release
  returned (the release gate, ``ReleaseCondition``): a release that returns early is waited
  for, one that leaves memory behind times out.
- :func:`kill_tree_and_verify` is :func:`offload_fsm.orchestrator.teardown.kill_tree_and_verify`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial, wraps
from typing import ParamSpec, TypeVar

import anyio

from offload_fsm.core.errors import (
    ConfigError,
    DeviceIdError,
    DeviceUnhealthy,
    ProbeError,
    ProbeTimeout,
)
from offload_fsm.events.bus import Recorder
from offload_fsm.gates.conditions import ReleaseCondition, WakeCondition
from offload_fsm.gates.gate import GateContext, run_gate
from offload_fsm.orchestrator.teardown import TeardownResult
from offload_fsm.orchestrator.teardown import kill_tree_and_verify as _kill_tree_and_verify
from offload_fsm.probe.attribution import resident_max
from offload_fsm.probe.base import GIB, GpuDevice, ProbeBackend, ProbeRound
from offload_fsm.probe.devices import resolve_device, split_ids
from offload_fsm.probe.processes import ProcessTable, detect_pid_namespace
from offload_fsm.settings import (
    CUDA_CONTEXT_FLOOR_GIB,
    DEFAULT_RELEASE_MARGIN_GIB,
    GatePolicy,
    gib_to_bytes,
    parse_positive_gib,
    threshold_from_env,
)
from offload_fsm.timing.backend import in_event_loop
from offload_fsm.timing.clock import RealClock
from offload_fsm.timing.deadlines import deadline

T = TypeVar("T")
P = ParamSpec("P")
GpuIds = str | Iterable[int | str | GpuDevice]

PROBE_TIMEOUT_S = 2.0  # one probe round; a hung driver call is abandoned
DEFAULT_RELEASE_LIMIT_GIB = CUDA_CONTEXT_FLOOR_GIB + DEFAULT_RELEASE_MARGIN_GIB

_shared: dict[str, ProbeBackend] = {}  # "backend" -> the process-wide backend


async def default_backend() -> ProbeBackend:
    """The process-wide backend (NVML, else nvidia-smi), opened on first use."""
    if "backend" not in _shared:
        from offload_fsm.probe.select import open_backend

        opened = await open_backend("auto")
        if "backend" in _shared:  # another caller won the race
            await opened.aclose()
        else:
            _shared["backend"] = opened
    return _shared["backend"]


def close_default_backend() -> None:
    """Close the shared backend (a later call opens a new one)."""
    backend = _shared.pop("backend", None)
    if backend is not None:
        _run(backend.aclose)


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` on an event loop of its own (refused inside a running one: it would block
    that loop, and nested asyncio loops are an error)."""
    if not in_event_loop():
        return anyio.run(fn)
    raise ConfigError(
        "offload_fsm.compat.gates call site",
        "inside a running event loop",
        "a thread without one (await the *_async variant there)",
    )


def _sync_form(fn: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """The sync form of a ``*_async`` function: the same arguments, run by :func:`_run`."""

    @wraps(fn)
    def sync(*args: P.args, **kwargs: P.kwargs) -> T:
        return _run(partial(fn, *args, **kwargs))

    sync.__name__ = sync.__qualname__ = fn.__name__.removesuffix("_async")
    sync.__doc__ = f"Sync form of :func:`{fn.__name__}`."
    return sync


async def _devices(gpus: GpuIds, backend: ProbeBackend) -> tuple[GpuDevice, ...]:
    refs: Sequence[int | str | GpuDevice] = split_ids(gpus) if isinstance(gpus, str) else list(gpus)
    if not refs:
        raise DeviceIdError("no GPU ids were given")
    devices = await backend.devices()
    by_key = {d.key: d for d in devices}
    nodes = sorted({d.node or "" for d in devices})
    out: dict[str, GpuDevice] = {}
    for ref in refs:
        if isinstance(ref, GpuDevice) or (isinstance(ref, str) and ref in by_key):
            key = ref.key if isinstance(ref, GpuDevice) else ref
            if key not in by_key:
                raise DeviceIdError(f"{key} is not one of the backend's GPUs")
            dev = by_key[key]
        elif len(nodes) > 1:  # an index or bus id names one GPU on *each* node
            raise DeviceIdError(
                f"GPU id {ref!r} is ambiguous: the backend sees GPUs on nodes {nodes}; "
                "pass GpuDevice objects or node/uuid keys"
            )
        else:
            dev = resolve_device(ref, devices)
        if dev.key in out:
            raise DeviceIdError(f"GPU id {ref!r} names the same GPU as another ({dev.uuid})")
        out[dev.key] = dev
    return tuple(out.values())


async def _round(backend: ProbeBackend, devices: tuple[GpuDevice, ...]) -> ProbeRound:
    try:
        async with deadline(RealClock(), PROBE_TIMEOUT_S):
            return await backend.probe(devices)
    except TimeoutError:
        raise ProbeTimeout(f"probe round took over {PROBE_TIMEOUT_S:g} s") from None


# --- max_process_residual_gib -----------------------------------------------------------------


async def max_process_residual_gib_async(
    root_pid: int,
    gpus: GpuIds,
    *,
    backend: ProbeBackend | None = None,
    pid_namespace: str | None = None,
    proc_root: str = "/proc",
) -> float | None:
    """Max per-GPU residual of ``root_pid``'s process tree on ``gpus`` in GiB, or None when
    it cannot be measured. ``pid_namespace`` None: detected from ``proc_root``."""
    if isinstance(root_pid, bool) or not isinstance(root_pid, int) or root_pid <= 0:
        raise ConfigError("root_pid", root_pid, "a positive pid")
    backend = backend or await default_backend()
    try:
        devices = await _devices(gpus, backend)
        rnd = await _round(backend, devices)
    except (DeviceIdError, DeviceUnhealthy):
        raise
    except ProbeError:
        return None
    namespace = pid_namespace or detect_pid_namespace(proc_root)
    tree = ProcessTable.snapshot(proc_root).tree(root_pid)
    if not tree:
        return None
    resident = resident_max(rnd, tree, pid_namespace=namespace)
    return None if resident is None else resident / GIB


max_process_residual_gib = _sync_form(max_process_residual_gib_async)


# --- max_used_gib -----------------------------------------------------------------------------


async def max_used_gib_async(gpus: GpuIds, *, backend: ProbeBackend | None = None) -> float:
    """Whole-GPU used memory in GiB, max over ``gpus``, from one probe round. Raises a
    :class:`ProbeError` when any GPU's usage cannot be measured (never 0 for unknown)."""
    backend = backend or await default_backend()
    devices = await _devices(gpus, backend)
    rnd = await _round(backend, devices)
    used = [rnd.memory_of(d).used_bytes for d in devices]
    unknown = [d.label() for d, u in zip(devices, used) if u is None]
    if unknown:
        raise ProbeError(f"used memory is unknown on {', '.join(unknown)}")
    return max(u for u in used if u is not None) / GIB


max_used_gib = _sync_form(max_used_gib_async)


# --- wait_for_residual (the wake gate) --------------------------------------------------------


async def _open_gate(
    condition: WakeCondition | ReleaseCondition,
    devices: tuple[GpuDevice, ...],
    backend: ProbeBackend,
    policy: GatePolicy,
    recorder: Recorder | None,
    engine_id: str | None,
) -> tuple[int | None, ...]:
    """Run the gate until it opens (or raises); the readings of the round that opened it."""
    result = await run_gate(
        condition,
        devices=devices,
        probe=backend,
        policy=policy,
        clock=RealClock(),
        recorder=recorder,
        ctx=GateContext(engine_id=engine_id),
    )
    assert result.verdict is not None  # fail_open is off: an open gate has a verdict
    return result.verdict.observed


def _threshold_bytes(threshold_gib: float | None) -> int:
    if threshold_gib is None:
        return threshold_from_env()[0]
    return gib_to_bytes(parse_positive_gib("threshold_gib", threshold_gib))


async def wait_for_residual_async(
    gpus: GpuIds,
    threshold_gib: float | None = None,
    timeout_s: float = 60.0,
    settle: int = 3,
    *,
    backend: ProbeBackend | None = None,
    recorder: Recorder | None = None,
    engine_id: str | None = None,
) -> float:
    """Wait until whole-GPU used memory <= ``threshold_gib`` (None:
    ``MILES_MAX_RESIDUAL_GPU_MEM_GB``, else 8 GiB) on every GPU, ``settle`` rounds in a row.
    Returns the max used GiB of the round that opened the gate.

    Raises :class:`~offload_fsm.core.errors.GateTimeout` at ``timeout_s`` (``readings`` per GPU)
    and :class:`~offload_fsm.core.errors.GateUnmeasurable` when the probe keeps failing.
    """
    threshold = _threshold_bytes(threshold_gib)
    policy = GatePolicy(deadline_s=timeout_s, settle_samples=settle)
    backend = backend or await default_backend()
    devices = await _devices(gpus, backend)
    condition = WakeCondition(devices, threshold)
    observed = await _open_gate(condition, devices, backend, policy, recorder, engine_id)
    return max(b for b in observed if b is not None) / GIB


wait_for_residual = _sync_form(wait_for_residual_async)


# --- wait_for_engine_release (the release gate) -----------------------------------------------


async def wait_for_engine_release_async(
    root_pid: int,
    gpus: GpuIds,
    limit_gib: float = DEFAULT_RELEASE_LIMIT_GIB,
    timeout_s: float = 30.0,
    settle: int = 3,
    *,
    backend: ProbeBackend | None = None,
    unmeasured: str = "pass",
    pid_namespace: str | None = None,
    proc_root: str = "/proc",
    recorder: Recorder | None = None,
    engine_id: str | None = None,
) -> float | None:
    """After an engine's release returned: wait until its process tree's residual (max per
    GPU) <= ``limit_gib`` (default: CUDA context floor + margin, 3 GiB) for ``settle``
    rounds. Returns the residual in GiB when the gate opened, or None when it could not be
    measured and ``unmeasured`` is ``"pass"`` (``"fail"``: the gate times out instead; the
    whole-GPU :func:`wait_for_residual` before the next wake still protects either way).
    """
    if isinstance(root_pid, bool) or not isinstance(root_pid, int) or root_pid <= 0:
        raise ConfigError("root_pid", root_pid, "a positive pid")
    limit = gib_to_bytes(parse_positive_gib("limit_gib", limit_gib))
    policy = GatePolicy(deadline_s=timeout_s, settle_samples=settle)
    backend = backend or await default_backend()
    devices = await _devices(gpus, backend)
    tree = ProcessTable.snapshot(proc_root).tree(root_pid)
    namespace = pid_namespace or detect_pid_namespace(proc_root)
    condition = ReleaseCondition(devices, lambda: tree, limit, unmeasured, namespace)
    observed = await _open_gate(condition, devices, backend, policy, recorder, engine_id)
    known = [b for b in observed if b is not None]
    return max(known) / GIB if known else None


wait_for_engine_release = _sync_form(wait_for_engine_release_async)


# --- teardown ---------------------------------------------------------------------------------


async def kill_tree_and_verify_async(
    root_pid: int,
    gpus: GpuIds,
    threshold_gib: float | None = None,
    timeout_s: float = 30.0,
    *,
    backend: ProbeBackend | None = None,
    term_grace_s: float = 5.0,
    kill_grace_s: float = 5.0,
    engine_id: str | None = None,
) -> TeardownResult:
    """Kill ``root_pid``'s whole tree (SIGTERM, then SIGKILL), then wait until whole-GPU used
    memory on ``gpus`` is back under ``threshold_gib``
    (see :mod:`offload_fsm.orchestrator.teardown`)."""
    threshold = _threshold_bytes(threshold_gib)
    backend = backend or await default_backend()
    devices = await _devices(gpus, backend)
    return await _kill_tree_and_verify(
        root_pid,
        devices,
        backend,
        timeout_s,
        threshold_bytes=threshold,
        term_grace_s=term_grace_s,
        kill_grace_s=kill_grace_s,
        engine_id=engine_id,
    )


kill_tree_and_verify = _sync_form(kill_tree_and_verify_async)


__all__ = [
    "DEFAULT_RELEASE_LIMIT_GIB",
    "close_default_backend",
    "default_backend",
    "kill_tree_and_verify",
    "kill_tree_and_verify_async",
    "max_process_residual_gib",
    "max_process_residual_gib_async",
    "max_used_gib",
    "max_used_gib_async",
    "wait_for_engine_release",
    "wait_for_engine_release_async",
    "wait_for_residual",
    "wait_for_residual_async",
]
