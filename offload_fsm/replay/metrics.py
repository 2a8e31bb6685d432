"""Prometheus metrics from events (the ``metrics`` extra: prometheus-client, imported lazily).

:class:`EventMetrics` turns events into a gate-wait histogram, per-GPU residual and used
gauges, a transitions counter and a failures counter by kind. Feed it live events
(``observe``) or use it as a replay observer (``offload-fsm replay --metrics-out FILE``).
"""

from __future__ import annotations

import os
from typing import Any

from offload_fsm.core.errors import MissingExtra
from offload_fsm.events.kinds import (
    AdapterCallFailed,
    Event,
    GateDecision,
    GateFailOpen,
    GateTimedOut,
    MemorySample,
    ProbeGaveUp,
    Transition,
)
from offload_fsm.replay import EngineTrack, short_gpu

METRICS_SUFFIXES = (".prom", ".txt")  # Prometheus text exposition format
GATE_WAIT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise MissingExtra("offload-fsm metrics", "prometheus-client", "metrics") from exc
    return prometheus_client


class EventMetrics:
    """Metrics of one run in their own registry (``registry`` to share one)."""

    def __init__(self, registry: Any = None) -> None:
        prom = self._prom = _prometheus()
        self.registry = registry if registry is not None else prom.CollectorRegistry()
        r = self.registry
        self.gate_wait = prom.Histogram(
            "offload_fsm_gate_wait_seconds",
            "Time from entering gated to entering waking",
            ["engine"],
            buckets=GATE_WAIT_BUCKETS,
            registry=r,
        )
        self.residual = prom.Gauge(
            "offload_fsm_gpu_residual_bytes",
            "Whole-GPU used memory at the last wake gate decision",
            ["gpu"],
            registry=r,
        )
        self.used = prom.Gauge(
            "offload_fsm_gpu_used_bytes", "Whole-GPU used memory, last sample", ["gpu"], registry=r
        )
        self.transitions = prom.Counter(
            "offload_fsm_transitions", "Lifecycle transitions", ["engine", "trigger"], registry=r
        )
        self.failures = prom.Counter(
            "offload_fsm_failures", "Failures by kind", ["kind"], registry=r
        )
        self._gated_at: dict[str, float] = {}

    def observe(self, event: Event) -> None:
        if isinstance(event, MemorySample):
            if event.used_bytes is not None:
                for gpu in event.gpus:
                    self.used.labels(short_gpu(gpu)).set(event.used_bytes)
        elif isinstance(event, Transition):
            self._transition(event)
        elif isinstance(event, GateDecision):
            if event.gate == "wake":
                for gpu, nbytes in zip(event.gpus, event.observed_bytes, strict=False):
                    if nbytes is not None:
                        self.residual.labels(short_gpu(gpu)).set(nbytes)
        elif isinstance(event, GateTimedOut):
            self.failures.labels("gate_timed_out").inc()
        elif isinstance(event, GateFailOpen):
            self.failures.labels("gate_fail_open").inc()
        elif isinstance(event, AdapterCallFailed):
            self.failures.labels("adapter_call_failed").inc()
        elif isinstance(event, ProbeGaveUp):
            self.failures.labels("probe_gave_up").inc()

    def _transition(self, ev: Transition) -> None:
        eid = ev.engine_id or "?"
        self.transitions.labels(eid, ev.trigger).inc()
        if ev.dst == "gated":
            self._gated_at[eid] = ev.ts
        elif ev.dst == "waking" and eid in self._gated_at:
            self.gate_wait.labels(eid).observe(ev.ts - self._gated_at.pop(eid))
        else:
            self._gated_at.pop(eid, None)
        if ev.dst == "failed":
            self.failures.labels("engine_failed").inc()

    # replay observer protocol
    def event(self, line: int, event: Event) -> None:
        self.observe(event)

    def state(self, engine: EngineTrack, old: str | None, new: str, ts: float, line: int) -> None:
        return None

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        data: bytes = self._prom.generate_latest(self.registry)
        return data

    def write(self, path: str | os.PathLike[str], *, force: bool = True) -> None:
        """Write the exposition to ``path`` under the safe-output rule (checked again here;
        ``offload-fsm replay --metrics-out`` checks before replaying): atomic, never through
        a symlink, onto a device, a FIFO or a directory."""
        from offload_fsm.core.safe_output import atomic_output, check_output

        target = check_output("--metrics-out", path, suffixes=METRICS_SUFFIXES, force=force)
        data = self.exposition()
        with atomic_output("--metrics-out", target) as f:
            f.write(data)


__all__ = ["GATE_WAIT_BUCKETS", "METRICS_SUFFIXES", "EventMetrics"]
