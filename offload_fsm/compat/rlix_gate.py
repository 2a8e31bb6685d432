"""offload_fsm's wake gate behind RLix's ``MilesPipeline._wait_for_overlap_engines_offloaded``.

RLix calls ``self._wait_for_overlap_engines_offloaded(allocated)`` in
``MilesPipeline._before_training``, after the scheduler granted the trainer its GPUs and
before ``train()`` wakes it (rlops/rlix ``rlix/pipeline/miles_pipeline.py`` at
f73bfafb06712b2501a658ca91caa609f0d0361a). The replacement keeps that call shape
(``(self, allocated_train_gpus, *, timeout_s=60.0) -> None``, assignable as the method) and
its two phases:

1. Wait (up to ``timeout_s``) until the rollout manager reports the engines on the granted
   GPUs ``offloaded`` or ``shell``. Advisory, as in RLix: a state timeout is a warning.
2. The measured gate: whole-GPU used memory (every process) <= ``MILES_MAX_RESIDUAL_GPU_MEM_GB``
   (RLix's parser; unset: 7.0 GiB, RLix's current default) on every granted GPU, run by
   :func:`offload_fsm.gates.gate.run_gate` with a settle window, a deadline and a decision event per
   round (``options.recorder``).

Where RLix is lenient the default is safe, and each difference is a named option of
:class:`OverlapGateOptions` (:data:`RLIX_BEHAVIOUR` sets all three as RLix has them):

- ``settle_samples`` 3: RLix opens on the first round under the threshold (1).
- ``on_unmeasurable`` "fail": raise :class:`~offload_fsm.core.errors.GateUnmeasurable` (or
  :class:`~offload_fsm.core.errors.BackendUnavailable` when no probe exists). RLix sleeps 3 s and
  goes on ("grace", logged as a warning here).
- ``on_timeout`` "fail": raise :class:`~offload_fsm.core.errors.GateTimeout` with the per-GPU
  readings. RLix at f73bfaf logs a warning and wakes anyway ("warn"); PR #17 raises too.

Not optional: phase 2 always runs. RLix skips it when there is no rollout manager yet or when
reading engine states fails; here those skip only phase 1. Only granted GPUs in the rollout
pool (``cluster_device_mappings["actor_infer"]``) are mapped to engine indices; RLix maps every
granted GPU, so a trainer GPU outside the pool waits for an engine that does not exist. A
``[N/A]`` reading keeps the gate closed (RLix's probe skips that GPU). An unknown GPU id, a lost
GPU and a threshold at or above a GPU's size raise at once.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from offload_fsm.compat.gates import _devices, _run, default_backend
from offload_fsm.compat.rlix_env import parse_env_positive_float, physical_ids
from offload_fsm.core.errors import BackendUnavailable, ConfigError, GateTimeout, GateUnmeasurable
from offload_fsm.events.bus import Recorder
from offload_fsm.gates.conditions import WakeCondition
from offload_fsm.gates.gate import GateContext, run_gate
from offload_fsm.probe.base import GIB, ProbeBackend
from offload_fsm.settings import (
    THRESHOLD_ENV,
    GatePolicy,
    check_threshold_fits,
    gib_to_bytes,
    parse_positive_int,
    parse_positive_seconds,
)
from offload_fsm.timing.clock import RealClock

logger = logging.getLogger(__name__)

# RLix's default for MILES_MAX_RESIDUAL_GPU_MEM_GB since PR #17 (10.0 at f73bfaf, 13.0 in the
# seed's run): the whole-GPU residual of a clean offload with the Megatron offload gap closed.
RLIX_DEFAULT_THRESHOLD_GB = 7.0
RLIX_GRACE_S = 3.0  # RLix's sleep when nvidia-smi cannot measure
OFFLOADED_STATES = frozenset({"offloaded", "shell"})  # engine states that hold no weights

EngineStates = Callable[[Any, list[int]], Mapping[int, str]]


@dataclass(frozen=True, slots=True)
class OverlapGateOptions:
    """How the replacement decides (see the module doc for each difference from RLix)."""

    settle_samples: int = 3
    on_unmeasurable: Literal["fail", "grace"] = "fail"
    on_timeout: Literal["fail", "warn"] = "fail"
    grace_s: float = RLIX_GRACE_S
    state_poll_s: float = 0.1  # RLix polls engine states every 0.1 s
    backend: ProbeBackend | None = None  # None: the process-wide NVML / nvidia-smi backend
    recorder: Recorder | None = None  # gets a decision event per probe round
    # (rollout_manager, engine indices) -> {index: state}; None: ray.get(get_engine_states)
    engine_states: EngineStates | None = None

    def __post_init__(self) -> None:
        parse_positive_int("settle_samples", self.settle_samples)
        if self.on_unmeasurable not in ("fail", "grace"):
            raise ConfigError("on_unmeasurable", self.on_unmeasurable, '"fail" or "grace"')
        if self.on_timeout not in ("fail", "warn"):
            raise ConfigError("on_timeout", self.on_timeout, '"fail" or "warn"')
        parse_positive_seconds("grace_s", self.grace_s)
        parse_positive_seconds("state_poll_s", self.state_poll_s)


RLIX_BEHAVIOUR = OverlapGateOptions(settle_samples=1, on_unmeasurable="grace", on_timeout="warn")


def _ray_engine_states(rollout_manager: Any, indices: list[int]) -> Mapping[int, str]:
    ray = importlib.import_module("ray")  # RLix runs this inside a Ray actor
    states: Mapping[int, str] = ray.get(rollout_manager.get_engine_states.remote(indices))
    return states


def _engine_indices(pipeline: Any, gpu_ids: Sequence[int]) -> list[int]:
    """The rollout manager's local engine indices on ``gpu_ids``: RLix numbers engines from
    the first GPU of the pipeline's rollout pool, ``rollout_num_gpus_per_engine`` each."""
    config = pipeline._pipeline_config
    args = config.miles_args
    per_engine = max(int(getattr(args, "rollout_num_gpus_per_engine", 1)), 1)
    mappings = getattr(config, "cluster_device_mappings", None) or {}
    pool = [int(g) for g in mappings.get("actor_infer", range(int(args.rollout_num_gpus)))]
    if not pool:
        return []
    first = min(pool)
    return sorted({(g - first) // per_engine for g in gpu_ids if g in pool})


def _wait_engine_states(
    pipeline: Any, gpu_ids: Sequence[int], timeout_s: float, options: OverlapGateOptions
) -> None:
    """Phase 1 (advisory): the engines on ``gpu_ids`` report that they hold no weights."""
    manager = getattr(pipeline, "_rollout_manager", None)
    if manager is None:
        logger.info("no rollout manager yet: no engine states to wait for; gating on memory")
        return
    indices = _engine_indices(pipeline, gpu_ids)
    if not indices:
        return
    read = options.engine_states or _ray_engine_states
    end = time.monotonic() + timeout_s
    while True:
        try:
            states = read(manager, indices)
        except Exception as exc:  # a Ray or manager failure: the memory gate still decides
            logger.warning("engine states unreadable (%r); gating on memory alone", exc)
            return
        seen = {states.get(i, "?") for i in indices}
        if seen <= OFFLOADED_STATES:
            logger.info("engines %s report state %s", indices, sorted(seen))
            return
        if time.monotonic() >= end:
            logger.warning(
                "engines %s still in state %s after %.1f s; gating on memory",
                indices,
                sorted(seen),
                timeout_s,
            )
            return
        time.sleep(options.state_poll_s)


async def _gate(
    gpu_ids: list[int],
    threshold_gb: float,
    timeout_s: float,
    options: OverlapGateOptions,
    pipeline_id: str | None,
) -> float:
    """Phase 2: the measured wake gate. Returns the max used GiB of the round that opened it."""
    backend = options.backend or await default_backend()
    devices = await _devices(gpu_ids, backend)
    threshold = gib_to_bytes(threshold_gb)
    check_threshold_fits(THRESHOLD_ENV, threshold_gb, threshold, devices)
    result = await run_gate(
        WakeCondition(devices, threshold),
        devices=devices,
        probe=backend,
        policy=GatePolicy(deadline_s=timeout_s, settle_samples=options.settle_samples),
        clock=RealClock(),
        recorder=options.recorder,
        ctx=GateContext(pipeline_id=pipeline_id),
    )
    assert result.verdict is not None  # fail_open is off: an open gate has a verdict
    return max(b for b in result.verdict.observed if b is not None) / GIB


def _wait(
    pipeline: Any, allocated_train_gpus: Sequence[int], timeout_s: float, opts: OverlapGateOptions
) -> None:
    timeout = parse_positive_seconds("timeout_s", timeout_s)
    gpu_ids = sorted(set(physical_ids("allocated_train_gpus", allocated_train_gpus)))
    if not gpu_ids:
        return  # nothing granted: no GPU to protect (RLix's caller refuses the allocation)
    _wait_engine_states(pipeline, gpu_ids, timeout, opts)
    threshold_gb = parse_env_positive_float(THRESHOLD_ENV, RLIX_DEFAULT_THRESHOLD_GB)
    pipeline_id = getattr(pipeline, "_pipeline_id", None)
    gate = partial(_gate, gpu_ids, threshold_gb, timeout, opts, pipeline_id)
    try:
        max_used = _run(gate)
    except GateTimeout as exc:
        if opts.on_timeout == "fail":
            raise
        logger.warning(
            "LOUD (on_timeout='warn'): whole-GPU residual above %.1f GiB on GPUs %s after "
            "%.1f s (readings %s); waking anyway, as RLix does",
            threshold_gb,
            gpu_ids,
            timeout,
            exc.readings,
        )
        return
    except (GateUnmeasurable, BackendUnavailable) as exc:
        if opts.on_unmeasurable == "fail":
            raise
        logger.warning(
            "LOUD (on_unmeasurable='grace'): GPU memory cannot be measured (%s); sleeping "
            "%.1f s and waking unmeasured, as RLix does",
            exc,
            opts.grace_s,
        )
        time.sleep(opts.grace_s)
        return
    logger.info(
        "whole-GPU residual max %.2f GiB on GPUs %s <= %.1f GiB for %d round(s): trainer may wake",
        max_used,
        gpu_ids,
        threshold_gb,
        opts.settle_samples,
    )


OverlapWait = Callable[..., None]


def make_overlap_wait(options: OverlapGateOptions | None = None) -> OverlapWait:
    """A ``_wait_for_overlap_engines_offloaded`` that decides as ``options`` say; assign it
    in ``MilesPipeline``'s class body or call it with the pipeline as first argument."""
    opts = options or OverlapGateOptions()

    def _wait_for_overlap_engines_offloaded(
        self: Any, allocated_train_gpus: Sequence[int], *, timeout_s: float = 60.0
    ) -> None:
        """Wait until the granted GPUs are safe for the trainer to wake on, or raise."""
        _wait(self, allocated_train_gpus, timeout_s, opts)

    return _wait_for_overlap_engines_offloaded


wait_for_overlap_engines_offloaded = make_overlap_wait()
