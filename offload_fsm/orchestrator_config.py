"""The orchestrator's settings: the wake threshold, the three gate policies, call deadlines."""

from __future__ import annotations

from dataclasses import dataclass, field

from offload_fsm.config import (
    CUDA_CONTEXT_FLOOR_GIB,
    DEFAULT_RELEASE_MARGIN_GIB,
    GatePolicy,
    gib_to_bytes,
)
from offload_fsm.errors import ConfigError
from offload_fsm.limits import check_threshold_bytes


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


__all__ = ["OrchestratorConfig"]
