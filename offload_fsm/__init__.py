"""offload_fsm: safe, observable GPU time-sharing for RL post-training.

Each engine gets an explicit lifecycle (active -> releasing -> slept -> gated -> waking ->
active, plus failed); wakes are gated on measured GPU memory; every step is an event.

The names below are the public API (docs/api.md): import them from here. They load on first
use, so ``import offload_fsm`` (the CLI, every simulated engine process) stays cheap; deeper
paths are internal and may move.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from offload_fsm.core.errors import (
        BackendUnavailable,
        ConfigError,
        DeviceIdError,
        DeviceUnhealthy,
        EngineCallTimeout,
        EngineError,
        EngineUnreachable,
        EventDecodeError,
        EventLogError,
        GateError,
        GateTimeout,
        GateUnmeasurable,
        IllegalTransition,
        MissingExtra,
        OffloadFsmError,
        ProbeError,
        ProbeTimeout,
        TransientProbeError,
    )
    from offload_fsm.core.lifecycle import TABLE, Evidence, Lifecycle, State, Trigger
    from offload_fsm.engines.base import EngineAdapter
    from offload_fsm.engines.sglang import SGLangAdapter
    from offload_fsm.engines.spec import Engine, EngineSpec
    from offload_fsm.engines.trainer import TrainerAdapter
    from offload_fsm.engines.vllm import VLLMAdapter
    from offload_fsm.events.bus import EventBus, Recorder, SlowPolicy, Subscription
    from offload_fsm.events.eventlog import EventLogWriter, load_events, read_events
    from offload_fsm.events.kinds import (
        EVENT_TYPES,
        AdapterCallFailed,
        AdapterCallFinished,
        AdapterCallStarted,
        AttributionReport,
        EngineRegistered,
        Event,
        GateDecision,
        GateFailOpen,
        GateTimedOut,
        MemorySample,
        PhaseChanged,
        ProbeGaveUp,
        ProbeRetry,
        RunFinished,
        RunStarted,
        Transition,
    )
    from offload_fsm.gates.conditions import ReleaseCondition, ResumeCondition, WakeCondition
    from offload_fsm.gates.gate import Condition, GateContext, GateResult, Verdict, run_gate
    from offload_fsm.orchestrator.orchestrator import Orchestrator
    from offload_fsm.probe.base import DeviceMemory, GpuDevice, ProbeBackend, ProbeRound
    from offload_fsm.probe.nvml import NvmlBackend
    from offload_fsm.probe.retry import RetryingProbe, RetryPolicy
    from offload_fsm.probe.select import open_backend
    from offload_fsm.probe.smi import SmiBackend
    from offload_fsm.ray_support.ray_probe import RayProbe
    from offload_fsm.replay.replayer import Replayer, replay_path
    from offload_fsm.replay.rules import Rule, Violation
    from offload_fsm.replay.tracks import ReplayResult
    from offload_fsm.settings import GatePolicy, OrchestratorConfig, threshold_from_env
    from offload_fsm.sim.fake_backend import FakeBackend
    from offload_fsm.sim.fake_devices import make_devices
    from offload_fsm.sim.fake_gpus import FakeGpus
    from offload_fsm.timing.clock import Clock, RealClock, VirtualClock

# Where each public name is defined (loaded on first access).
_EXPORTS: dict[str, str] = {
    # orchestrator and its settings
    "Orchestrator": "offload_fsm.orchestrator.orchestrator",
    "GatePolicy": "offload_fsm.settings",
    "OrchestratorConfig": "offload_fsm.settings",
    "threshold_from_env": "offload_fsm.settings",
    # engines: what is registered and how it is driven
    "Engine": "offload_fsm.engines.spec",
    "EngineSpec": "offload_fsm.engines.spec",
    "EngineAdapter": "offload_fsm.engines.base",
    "SGLangAdapter": "offload_fsm.engines.sglang",
    "VLLMAdapter": "offload_fsm.engines.vllm",
    "TrainerAdapter": "offload_fsm.engines.trainer",
    # states: the lifecycle table
    "TABLE": "offload_fsm.core.lifecycle",
    "Evidence": "offload_fsm.core.lifecycle",
    "Lifecycle": "offload_fsm.core.lifecycle",
    "State": "offload_fsm.core.lifecycle",
    "Trigger": "offload_fsm.core.lifecycle",
    # events: records, bus, log
    "EVENT_TYPES": "offload_fsm.events.kinds",
    "AdapterCallFailed": "offload_fsm.events.kinds",
    "AdapterCallFinished": "offload_fsm.events.kinds",
    "AdapterCallStarted": "offload_fsm.events.kinds",
    "AttributionReport": "offload_fsm.events.kinds",
    "EngineRegistered": "offload_fsm.events.kinds",
    "Event": "offload_fsm.events.kinds",
    "GateDecision": "offload_fsm.events.kinds",
    "GateFailOpen": "offload_fsm.events.kinds",
    "GateTimedOut": "offload_fsm.events.kinds",
    "MemorySample": "offload_fsm.events.kinds",
    "PhaseChanged": "offload_fsm.events.kinds",
    "ProbeGaveUp": "offload_fsm.events.kinds",
    "ProbeRetry": "offload_fsm.events.kinds",
    "RunFinished": "offload_fsm.events.kinds",
    "RunStarted": "offload_fsm.events.kinds",
    "Transition": "offload_fsm.events.kinds",
    "EventBus": "offload_fsm.events.bus",
    "Recorder": "offload_fsm.events.bus",
    "SlowPolicy": "offload_fsm.events.bus",
    "Subscription": "offload_fsm.events.bus",
    "EventLogWriter": "offload_fsm.events.eventlog",
    "load_events": "offload_fsm.events.eventlog",
    "read_events": "offload_fsm.events.eventlog",
    # probe backends
    "DeviceMemory": "offload_fsm.probe.base",
    "GpuDevice": "offload_fsm.probe.base",
    "ProbeBackend": "offload_fsm.probe.base",
    "ProbeRound": "offload_fsm.probe.base",
    "NvmlBackend": "offload_fsm.probe.nvml",
    "SmiBackend": "offload_fsm.probe.smi",
    "RetryPolicy": "offload_fsm.probe.retry",
    "RetryingProbe": "offload_fsm.probe.retry",
    "open_backend": "offload_fsm.probe.select",
    "RayProbe": "offload_fsm.ray_support.ray_probe",
    "FakeGpus": "offload_fsm.sim.fake_gpus",
    "FakeBackend": "offload_fsm.sim.fake_backend",
    "make_devices": "offload_fsm.sim.fake_devices",
    # the gate
    "Condition": "offload_fsm.gates.gate",
    "GateContext": "offload_fsm.gates.gate",
    "GateResult": "offload_fsm.gates.gate",
    "Verdict": "offload_fsm.gates.gate",
    "run_gate": "offload_fsm.gates.gate",
    "ReleaseCondition": "offload_fsm.gates.conditions",
    "ResumeCondition": "offload_fsm.gates.conditions",
    "WakeCondition": "offload_fsm.gates.conditions",
    # time
    "Clock": "offload_fsm.timing.clock",
    "RealClock": "offload_fsm.timing.clock",
    "VirtualClock": "offload_fsm.timing.clock",
    # errors
    "BackendUnavailable": "offload_fsm.core.errors",
    "ConfigError": "offload_fsm.core.errors",
    "DeviceIdError": "offload_fsm.core.errors",
    "DeviceUnhealthy": "offload_fsm.core.errors",
    "EngineCallTimeout": "offload_fsm.core.errors",
    "EngineError": "offload_fsm.core.errors",
    "EngineUnreachable": "offload_fsm.core.errors",
    "EventDecodeError": "offload_fsm.core.errors",
    "EventLogError": "offload_fsm.core.errors",
    "GateError": "offload_fsm.core.errors",
    "GateTimeout": "offload_fsm.core.errors",
    "GateUnmeasurable": "offload_fsm.core.errors",
    "IllegalTransition": "offload_fsm.core.errors",
    "MissingExtra": "offload_fsm.core.errors",
    "OffloadFsmError": "offload_fsm.core.errors",
    "ProbeError": "offload_fsm.core.errors",
    "ProbeTimeout": "offload_fsm.core.errors",
    "TransientProbeError": "offload_fsm.core.errors",
    # replay
    "Replayer": "offload_fsm.replay.replayer",
    "replay_path": "offload_fsm.replay.replayer",
    "ReplayResult": "offload_fsm.replay.tracks",
    "Rule": "offload_fsm.replay.rules",
    "Violation": "offload_fsm.replay.rules",
}

__all__ = [
    "EVENT_TYPES",
    "TABLE",
    "AdapterCallFailed",
    "AdapterCallFinished",
    "AdapterCallStarted",
    "AttributionReport",
    "BackendUnavailable",
    "Clock",
    "Condition",
    "ConfigError",
    "DeviceIdError",
    "DeviceMemory",
    "DeviceUnhealthy",
    "Engine",
    "EngineAdapter",
    "EngineCallTimeout",
    "EngineError",
    "EngineRegistered",
    "EngineSpec",
    "EngineUnreachable",
    "Event",
    "EventBus",
    "EventDecodeError",
    "EventLogError",
    "EventLogWriter",
    "Evidence",
    "FakeBackend",
    "FakeGpus",
    "GateContext",
    "GateDecision",
    "GateError",
    "GateFailOpen",
    "GatePolicy",
    "GateResult",
    "GateTimedOut",
    "GateTimeout",
    "GateUnmeasurable",
    "GpuDevice",
    "IllegalTransition",
    "Lifecycle",
    "MemorySample",
    "MissingExtra",
    "NvmlBackend",
    "OffloadFsmError",
    "Orchestrator",
    "OrchestratorConfig",
    "PhaseChanged",
    "ProbeBackend",
    "ProbeError",
    "ProbeGaveUp",
    "ProbeRetry",
    "ProbeRound",
    "ProbeTimeout",
    "RayProbe",
    "RealClock",
    "Recorder",
    "ReleaseCondition",
    "ReplayResult",
    "Replayer",
    "ResumeCondition",
    "RetryPolicy",
    "RetryingProbe",
    "Rule",
    "RunFinished",
    "RunStarted",
    "SGLangAdapter",
    "SlowPolicy",
    "SmiBackend",
    "State",
    "Subscription",
    "TrainerAdapter",
    "TransientProbeError",
    "Transition",
    "Trigger",
    "VLLMAdapter",
    "Verdict",
    "Violation",
    "VirtualClock",
    "WakeCondition",
    "__version__",
    "load_events",
    "make_devices",
    "open_backend",
    "read_events",
    "replay_path",
    "run_gate",
    "threshold_from_env",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
