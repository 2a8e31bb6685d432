"""Hand-written event logs: build a run's log event by event, for tests of replay rules,
of log consumers (summaries, traces, metrics) and of the testing assertions themselves.

:class:`LogBuilder` keeps a running seq and clock; ``wake()`` / ``release()`` write the
usual transition sequences, ``gate()`` / ``sample()`` / ``fail_open()`` the measurements.
GPUs are named by index among 4 fake 80 GiB GPUs. :func:`incident_log` is the real incident
(release said offloaded, 29 GiB stayed, the trainer woke onto it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from offload_fsm import __version__
from offload_fsm.events import codec
from offload_fsm.events.kinds import (
    AdapterCallFinished,
    AttributionReport,
    EngineRegistered,
    Event,
    GateDecision,
    GateFailOpen,
    MemorySample,
    RunFinished,
    RunStarted,
    Transition,
)
from offload_fsm.probe.base import GIB
from offload_fsm.sim.fake_devices import make_devices

TOTAL = 80 * GIB
GPUS: tuple[str, ...] = tuple(d.key for d in make_devices(4))
E = TypeVar("E", bound=Event)


def write_events(path: Path, events: Sequence[Event]) -> Path:
    """``events`` as a JSONL log at ``path``."""
    path.write_bytes(b"".join(codec.encode(e) + b"\n" for e in events))
    return path


class LogBuilder:
    """Builds a log event by event with a running seq and clock (``dt`` seconds apart)."""

    def __init__(
        self,
        *,
        threshold: int | None = 7 * GIB,
        settle: int = 2,
        fail_open: bool = False,
        run_id: str = "hand",
        dt: float = 0.5,
    ) -> None:
        self.events: list[Event] = []
        self.seq = 0
        self.ts = 1_700_000_000.0
        self.dt = dt
        self.run_id = run_id
        self.threshold = threshold
        self.settle = settle
        self.engines: dict[str, tuple[str, ...]] = {}
        self.add(
            RunStarted,
            tool_version=__version__,
            threshold_bytes=threshold,
            settle_samples=settle,
            fail_open=fail_open,
            backend="fake",
        )

    def add(self, kind: type[E], **fields: Any) -> E:
        self.seq += 1
        self.ts += self.dt
        fields.setdefault("seq", self.seq)
        fields.setdefault("ts", self.ts)
        fields.setdefault("run_id", self.run_id)
        event = kind(**fields)
        self.events.append(event)
        return event

    @property
    def line(self) -> int:
        """The line number the last added event will have."""
        return len(self.events)

    def engine(
        self,
        eid: str,
        gpus: Sequence[int],
        state: str = "active",
        *,
        role: str = "engine",
        share_group: str | None = None,
    ) -> None:
        keys = tuple(GPUS[g] for g in gpus)
        self.engines[eid] = keys
        self.add(
            EngineRegistered,
            engine_id=eid,
            gpus=keys,
            role=role,
            adapter="sim",
            initial_state=state,
            share_group=share_group,
        )

    def t(self, eid: str, src: str, dst: str, trigger: str, **extra: Any) -> None:
        if trigger == "fail":
            extra.setdefault("reason", "test")
        if trigger == "recover":
            extra.setdefault("evidence", "resident 0.5 GiB")
        self.add(
            Transition,
            engine_id=eid,
            gpus=self.engines.get(eid, ()),
            src=src,
            dst=dst,
            trigger=trigger,
            **extra,
        )

    def sample(self, gpu: int, used: int | None) -> None:
        self.add(
            MemorySample,
            gpus=(GPUS[gpu],),
            backend="fake",
            used_bytes=used,
            free_bytes=None if used is None else TOTAL - used,
            total_bytes=TOTAL,
        )

    def gate(
        self,
        eid: str,
        observed: Sequence[int | None],
        *,
        opened: bool,
        limit: int | None = None,
        settle_count: int | None = None,
        settle_required: int | None = None,
        gpus: Sequence[int] | None = None,
        gate: str = "wake",
    ) -> None:
        keys = tuple(GPUS[g] for g in gpus) if gpus is not None else self.engines[eid]
        limit = self.threshold if limit is None else limit
        required = self.settle if settle_required is None else settle_required
        self.add(
            GateDecision,
            engine_id=eid,
            gpus=keys,
            gate=gate,
            passed=all(b is not None and limit is not None and b <= limit for b in observed),
            opened=opened,
            observed_bytes=tuple(observed),
            limit_bytes=limit,
            settle_count=(required if opened else 0) if settle_count is None else settle_count,
            settle_required=required,
            attempt=1,
            elapsed_s=0.5,
        )

    def fail_open(self, eid: str) -> None:
        self.add(
            GateFailOpen,
            engine_id=eid,
            gpus=self.engines[eid],
            gate="wake",
            error="NVML: driver not loaded",
            elapsed_s=0.1,
        )

    def wake(self, eid: str, observed: Sequence[int | None] | None = None) -> None:
        """slept -> gated -> (passing, settled gate) -> waking -> active."""
        self.t(eid, "slept", "gated", "request_wake")
        obs = observed if observed is not None else [GIB] * len(self.engines[eid])
        self.gate(eid, obs, opened=False, settle_count=1)
        self.gate(eid, obs, opened=True)
        self.t(eid, "gated", "waking", "gate_open")
        self.t(eid, "waking", "active", "woken")

    def release(self, eid: str) -> None:
        self.t(eid, "active", "releasing", "release")
        self.t(eid, "releasing", "slept", "released")

    def finish(self, status: str = "ok") -> None:
        self.add(RunFinished, status=status)

    def write(self, path: Path) -> Path:
        return write_events(path, self.events)


def incident_log(*, with_gate_decision: bool) -> LogBuilder:
    """The real incident: release said offloaded but 29 GB was still used; the trainer woke.

    The engine's release call returned 200 and the log moved it to slept, but the engine had
    started without its memory saver: 29 GiB stayed on GPU 0. The trainer's wake went ahead:
    either with no gate at all (the old "sleep 3 s and go" fallback) or through a gate that
    logged the 29 GiB and opened anyway.
    """
    b = LogBuilder(threshold=7 * GIB, settle=2)
    b.engine("p1-infer", [0], "active")
    b.engine("p1-train", [0], "slept", role="trainer")
    b.t("p1-infer", "active", "releasing", "release")
    b.add(
        AdapterCallFinished,
        engine_id="p1-infer",
        gpus=b.engines["p1-infer"],
        call="release_memory",
        elapsed_s=0.2,
        detail="HTTP 200",
    )
    b.t("p1-infer", "releasing", "slept", "released", reason="release returned 200")
    b.sample(0, 29 * GIB)
    b.add(
        AttributionReport,
        engine_id="p1-infer",
        gpus=b.engines["p1-infer"],
        used_bytes=(29 * GIB,),
        engine_resident_bytes=(int(28.4 * GIB),),
        unattributed_bytes=(int(0.6 * GIB),),
        context="after_release",
    )
    b.t("p1-train", "slept", "gated", "request_wake")
    if with_gate_decision:
        b.gate("p1-train", [29 * GIB], opened=True)
    b.t("p1-train", "gated", "waking", "gate_open")
    b.t("p1-train", "waking", "active", "woken")
    b.finish()
    return b
