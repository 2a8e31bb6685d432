"""The one settings module: the wake threshold and its defaults, the gate policy, the
orchestrator's settings, and strict parsing of user input (environment variables, CLI flags).
Run configuration files (what the drivers read) are :mod:`offload_fsm.drivers.config_file`.

Every parser raises :class:`offload_fsm.core.errors.ConfigError` naming the input, the value and
what is accepted; nothing silently falls back to a default once a value was given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from offload_fsm.core.errors import ConfigError
from offload_fsm.core.limits import (
    MAX_GIB,
    MAX_ROUNDS,
    MAX_SECONDS,
    MAX_SETTLE,
    check_number,
    check_threshold_bytes,
)
from offload_fsm.probe.base import GIB, GpuDevice

THRESHOLD_ENV = "MILES_MAX_RESIDUAL_GPU_MEM_GB"

# Default wake-gate threshold. Whole-GPU residual after a clean offload was measured at
# ~5-7 GiB (Megatron ~3 + SGLang ~1.7 + CUDA contexts) on a 0.5B model; upstream runs used
# 7-13 GiB. 8 GiB opens for a clean offload yet refuses a release that left a model behind.
DEFAULT_THRESHOLD_GIB = 8.0
# Per-engine resident limit after a release: the CUDA context floor (~0.6-0.75 GiB on an H200)
# plus a margin for NCCL buffers, graph pools and allocator slack.
CUDA_CONTEXT_FLOOR_GIB = 0.75
DEFAULT_RELEASE_MARGIN_GIB = 2.25


def parse_positive_gib(name: str, raw: str | float) -> float:
    """A positive, finite number of GiB, at most 1 PiB. ``name`` is what the user set."""
    return check_number(
        name,
        raw,
        minimum=0.0,
        exclusive_minimum=True,
        maximum=MAX_GIB,
        what="a positive, finite number of GiB (e.g. 8 or 7.5)",
    )


def parse_threshold_gib(name: str, raw: str | float) -> int:
    """A wake threshold given in GiB, as bytes: the limits ``demo``, ``gate`` and ``replay``
    share (:func:`offload_fsm.core.limits.check_threshold_bytes`)."""
    return check_threshold_bytes(name, raw, gib_to_bytes(parse_positive_gib(name, raw)))


def gib_to_bytes(gib: float) -> int:
    return round(gib * GIB)


def threshold_from_env(env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """(threshold bytes, where it came from). Unset -> the documented default."""
    env = os.environ if env is None else env
    if THRESHOLD_ENV in env:
        return parse_threshold_gib(THRESHOLD_ENV, env[THRESHOLD_ENV]), THRESHOLD_ENV
    return gib_to_bytes(DEFAULT_THRESHOLD_GIB), "default"


def check_threshold_fits(
    name: str, raw: object, threshold_bytes: int, devices: Iterable[GpuDevice]
) -> None:
    """Refuse a wake threshold at or above a GPU's total memory: used memory can never exceed
    it there, so the gate would open onto anything (the gate silently turned off)."""
    for dev in devices:
        total = dev.total_bytes
        if total is not None and threshold_bytes >= total:
            raise ConfigError(
                name,
                raw,
                f"a threshold below the {total / GIB:g} GiB of {dev.label()} ({dev.uuid}); "
                "one the GPU cannot exceed turns the wake gate off",
            )


def parse_positive_int(
    name: str, raw: str | int, *, minimum: int = 1, maximum: int = MAX_ROUNDS
) -> int:
    return int(check_number(name, raw, minimum=minimum, maximum=maximum, integer=True))


def parse_positive_seconds(name: str, raw: str | float, *, maximum: float = MAX_SECONDS) -> float:
    return check_number(
        name,
        raw,
        minimum=0.0,
        exclusive_minimum=True,
        maximum=maximum,
        what="a positive number of seconds",
    )


@dataclass(frozen=True, slots=True)
class GatePolicy:
    """How a probe gate polls and decides. Defaults are documented in docs/architecture.md."""

    settle_samples: int = 3  # the condition must hold for this many rounds in a row
    deadline_s: float = 60.0
    poll_min_s: float = 0.001  # right after memory moved: react within a few ms
    poll_max_s: float = 0.05  # cap while memory does not move; nudges reset to poll_min
    settle_interval_s: float = 0.0005  # between the settle rounds once the condition holds
    backoff: float = 1.5
    probe_timeout_s: float = 2.0  # one probe round; a hung driver call is abandoned
    fail_open: bool = False  # LOUD: open without a measurement when the probe fails
    heartbeat_s: float = 1.0  # a progress decision event at least this often while waiting

    def __post_init__(self) -> None:
        parse_positive_int("settle_samples", self.settle_samples, maximum=MAX_SETTLE)
        for name in (
            "deadline_s",
            "poll_min_s",
            "poll_max_s",
            "settle_interval_s",
            "probe_timeout_s",
            "heartbeat_s",
        ):
            parse_positive_seconds(name, getattr(self, name))
        if self.poll_max_s < self.poll_min_s:
            raise ConfigError("poll_max_s", self.poll_max_s, f">= poll_min_s ({self.poll_min_s})")
        if not self.backoff >= 1.0:
            raise ConfigError("backoff", self.backoff, "a factor >= 1")


@dataclass(frozen=True, slots=True)
class OrchestratorConfig:
    threshold_bytes: int
    wake_gate: GatePolicy = field(default_factory=GatePolicy)
    release_gate: GatePolicy = field(default_factory=lambda: GatePolicy(deadline_s=30.0))
    resume_gate: GatePolicy = field(
        default_factory=lambda: GatePolicy(deadline_s=30.0, settle_samples=1)
    )
    call_timeout_s: float = 120.0  # every adapter call
    drain_timeout_s: float = 30.0
    default_release_limit_bytes: int = gib_to_bytes(
        CUDA_CONTEXT_FLOOR_GIB + DEFAULT_RELEASE_MARGIN_GIB
    )
    release_unmeasured: str = "pass"  # "pass" | "fail" when no engine PID is visible
    resume_unmeasured: str = "pass"
    proc_root: str = "/proc"
    # "host" | "foreign" | "unknown"; None: detected from ``proc_root`` at start. In a
    # foreign PID namespace per-process figures are unknown (whole-GPU ones stay valid).
    pid_namespace: str | None = None
    # Gates polling at the same moment share one probe round over their GPUs (probe/shared.py).
    # None: where the backend's rounds are not cheap (probe.base.rounds_are_cheap): NVML,
    # nvidia-smi and Ray rounds are shared, the in-memory fake's are not.
    share_probe_rounds: bool | None = None

    def __post_init__(self) -> None:
        check_threshold_bytes("threshold_bytes", self.threshold_bytes, self.threshold_bytes)
        for name in ("release_unmeasured", "resume_unmeasured"):
            if getattr(self, name) not in ("pass", "fail"):
                raise ConfigError(name, getattr(self, name), "'pass' or 'fail'")
