"""Event kinds: frozen dataclasses, one per kind, with flat fields.

Every event carries the envelope (schema version ``v``, per-run ``seq``, ``ts`` from the
injected clock, ``run_id``, ``pipeline_id``, ``engine_id``, ``gpus``); each kind adds its own
fields. Bytes are ``int`` and ``None`` means *unknown* (never 0). ``kind`` is a class
attribute and is written first in each JSON line (see :mod:`offload_fsm.events.codec`).

docs/events.md documents every kind and field; a test keeps it in step with this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Fields every kind carries; ``kind`` itself is written first in each JSON line."""

    kind: ClassVar[str] = "event"
    v: int = SCHEMA_VERSION  # schema version of this event (readers refuse newer ones)
    seq: int  # per-run sequence number from 1, in publication order
    ts: float  # wall-clock time in seconds since the epoch, from the injected clock
    run_id: str  # the run this event belongs to (one log file per run)
    pipeline_id: str | None = None  # the RL pipeline the event concerns (None: run-wide)
    engine_id: str | None = None  # the engine or trainer the event concerns (None: none)
    gpus: tuple[str, ...] = ()  # GPU ids (UUIDs or bus ids) the event concerns


# --- run ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(Event):
    """First event of a run: what the run was configured with (replay reads its topology)."""

    kind: ClassVar[str] = "run_started"
    tool_version: str  # offload_fsm version that wrote the log
    threshold_bytes: int | None  # the residual gate threshold in force (None: no wake gate)
    settle_samples: int  # consecutive passing probe rounds a gate needs before it opens
    fail_open: bool  # whether gates open (loudly) when memory cannot be measured
    backend: str  # probe backend: "nvml" | "smi" | "fake"
    command: str = ""  # the command line that started the run


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineRegistered(Event):
    """An engine (or trainer) joined the run: its GPUs and process root."""

    kind: ClassVar[str] = "engine_registered"
    role: str  # "engine" | "trainer"
    adapter: str  # "sim" | "sglang" | "vllm" | "trainer" | ...
    initial_state: str  # lifecycle state the engine starts in
    process_root: int | None = None  # PID at the root of the engine's process tree (None: unknown)
    # Engines with the same non-empty group may be awake together on a shared GPU.
    share_group: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(Event):
    """Last event of a run (a log without it was cut off)."""

    kind: ClassVar[str] = "run_finished"
    status: str  # "ok" | "failed" | "cancelled"
    reason: str | None = None  # why the run failed or was cancelled


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseChanged(Event):
    """A driver's progress marker (rollout, shrink, train, expand ...)."""

    kind: ClassVar[str] = "phase_changed"
    step: int  # the driver's training step
    phase: str  # the phase that begins now


# --- lifecycle ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition(Event):
    """An engine's lifecycle moved from ``src`` to ``dst`` (see docs/lifecycle.md)."""

    kind: ClassVar[str] = "transition"
    src: str  # state before
    dst: str  # state after
    trigger: str  # the trigger that was fired
    reason: str | None = None  # why the engine failed (``fail`` only)
    evidence: str | None = None  # what justified a ``recover``


# --- probes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MemorySample(Event):
    """Whole-device memory of one GPU (``gpus`` has one entry) in one probe round."""

    kind: ClassVar[str] = "memory_sample"
    backend: str  # probe backend that measured it
    used_bytes: int | None  # device memory in use by all processes
    free_bytes: int | None  # device memory free
    total_bytes: int | None  # device memory in total
    reserved_bytes: int | None = None  # memory the driver reserves (NVML v2 only)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeRetry(Event):
    """A probe call failed in a way that may pass on retry; the next try follows ``delay_s``."""

    kind: ClassVar[str] = "probe_retry"
    backend: str  # probe backend that failed
    attempt: int  # the attempt that failed, from 1
    error: str  # the error message
    delay_s: float  # backoff before the next attempt, in seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeGaveUp(Event):
    """A probe failed past its retries (or could not be retried); memory is unknown."""

    kind: ClassVar[str] = "probe_gave_up"
    backend: str  # probe backend that failed
    attempts: int  # attempts made
    error: str  # the last error message
    error_type: str  # the last error's class name


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessEntry:
    """One GPU process in an attribution report."""

    gpu: str  # the GPU the process uses
    pid: int  # process id (in the probe's PID namespace)
    used_bytes: int | None  # memory the process holds on that GPU (None: not reported)
    owner: str  # an engine id, "foreign" or "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttributionReport(Event):
    """Who holds the memory on ``gpus`` (tuples are aligned with ``gpus``)."""

    kind: ClassVar[str] = "attribution_report"
    used_bytes: tuple[int | None, ...]  # whole-device memory in use per GPU
    engine_resident_bytes: tuple[int | None, ...]  # the engine's own tree per GPU (None: unknown)
    unattributed_bytes: tuple[int | None, ...]  # device used minus every listed process
    processes: tuple[ProcessEntry, ...] = ()  # every GPU process seen, with its owner
    pid_namespace: str = "host"  # "host" | "foreign" (per-process figures unknown)
    context: str = ""  # why the report was made: "after_release", "gate_timeout", ...


# --- gates --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GateDecision(Event):
    """One evaluation of a probe gate over one round (``observed_bytes`` aligned with gpus)."""

    kind: ClassVar[str] = "gate_decision"
    gate: str  # "wake" (whole-GPU residual) | "release" (engine resident) | "resume"
    passed: bool  # the condition held on this round
    opened: bool  # the gate opened (held for ``settle_required`` rounds in a row)
    observed_bytes: tuple[int | None, ...]  # the bytes the gate compared, per GPU
    limit_bytes: int | None  # the threshold compared against (None: none)
    settle_count: int  # passing rounds in a row so far, this one included
    settle_required: int  # passing rounds in a row needed to open
    attempt: int  # probe round number within this gate, from 1
    elapsed_s: float  # seconds since the gate started waiting
    detail: str = ""  # free text, e.g. which GPU is over the limit


@dataclass(frozen=True, slots=True, kw_only=True)
class GateFailOpen(Event):
    """LOUD: a gate opened without a measurement because the caller chose fail-open."""

    kind: ClassVar[str] = "gate_fail_open"
    gate: str  # which gate: "wake" | "release" | "resume"
    error: str  # why memory could not be measured
    elapsed_s: float  # seconds since the gate started waiting


@dataclass(frozen=True, slots=True, kw_only=True)
class GateTimedOut(Event):
    """A gate's condition did not hold (settled) before its deadline; the gate stayed closed."""

    kind: ClassVar[str] = "gate_timed_out"
    gate: str  # which gate: "wake" | "release" | "resume"
    last_bytes: tuple[int | None, ...]  # the last bytes compared, per GPU
    limit_bytes: int | None  # the threshold compared against (None: none)
    elapsed_s: float  # seconds the gate waited
    unmeasured: bool = False  # closed because memory could not be measured


# --- engine calls ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterCallStarted(Event):
    """offload_fsm called an engine or trainer (release, resume, health ...)."""

    kind: ClassVar[str] = "adapter_call_started"
    call: str  # the adapter method called, e.g. "release" | "resume"
    detail: str = ""  # free text, e.g. the tags released


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterCallFinished(Event):
    """An engine or trainer call returned successfully."""

    kind: ClassVar[str] = "adapter_call_finished"
    call: str  # the adapter method called
    elapsed_s: float  # seconds the call took
    detail: str = ""  # free text, e.g. what the engine answered


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterCallFailed(Event):
    """An engine or trainer call failed or timed out (the engine is then moved to failed)."""

    kind: ClassVar[str] = "adapter_call_failed"
    call: str  # the adapter method called
    elapsed_s: float  # seconds until the call failed
    error_type: str  # the error's class name
    error: str  # the error message


EVENT_TYPES: tuple[type[Event], ...] = (
    RunStarted,
    EngineRegistered,
    RunFinished,
    PhaseChanged,
    Transition,
    MemorySample,
    ProbeRetry,
    ProbeGaveUp,
    AttributionReport,
    GateDecision,
    GateFailOpen,
    GateTimedOut,
    AdapterCallStarted,
    AdapterCallFinished,
    AdapterCallFailed,
)
KINDS: dict[str, type[Event]] = {cls.kind: cls for cls in EVENT_TYPES}
assert len(KINDS) == len(EVENT_TYPES), "duplicate event kind"

__all__ = [
    *(c.__name__ for c in EVENT_TYPES),
    "EVENT_TYPES",
    "KINDS",
    "SCHEMA_VERSION",
    "Event",
    "ProcessEntry",
]
