"""The reliability rig: one orchestrator run with its event log on disk, and the checks every
fault-matrix row makes on it.

A :class:`Rig` runs in virtual time on the simulated GPUs by default (any probe, clock or
ledger can be passed in). Its recorder writes the log through the bus to a real file and
checks the ground truth at every ``gated -> waking`` transition: the memory the ledger
really holds on the engine's GPUs at that instant must be at or under the threshold (what a
gate decision *said* is checked separately, from the log). :func:`check_log` then reads the
file back and replays it.

The optional :class:`Checkpoints` counts the await points an operation passes (event
emits, probe rounds, adapter calls, clock sleeps) and can cancel a scope at the k-th one:
the cancellation matrix uses it to cancel at every await point, not at one example.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from offload_fsm.core.lifecycle import TABLE, State, Trigger
from offload_fsm.events.bus import EventBus, Recorder
from offload_fsm.events.eventlog import EventLogWriter, load_events
from offload_fsm.events.kinds import (
    EngineRegistered,
    Event,
    GateDecision,
    GateFailOpen,
    RunFinished,
    RunStarted,
    Transition,
)
from offload_fsm.orchestrator.orchestrator import EngineSpec, Orchestrator, OrchestratorConfig
from offload_fsm.probe.base import GIB, GpuDevice, ProbeBackend, ProbeRound
from offload_fsm.probe.retry import RetryingProbe, RetryPolicy
from offload_fsm.replay import replay_path
from offload_fsm.settings import GatePolicy
from offload_fsm.sim.engine import SimEngine
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.sim.sim_model import FaultPlan, Footprint
from offload_fsm.testing import EventLog, assert_no_wake_over_threshold, assert_replays_clean
from offload_fsm.timing.clock import Clock, VirtualClock, WakeToken

E = TypeVar("E", bound=Event)

THRESHOLD = 8 * GIB
ENGINE_FP = Footprint.gib(weights=2.5, kv_cache=24.0, cuda_graph=1.5, context=0.6)

# How a cancellation leaves an engine, by the state it was in when cancelled
# (orchestrator docstring, docs/reliability.md).
AFTER_CANCEL = {
    State.RELEASING: State.FAILED,
    State.GATED: State.SLEPT,
    State.WAKING: State.FAILED,
    State.ACTIVE: State.ACTIVE,  # the operation had finished: nothing to undo
    State.SLEPT: State.SLEPT,
    State.FAILED: State.FAILED,
}


def fast_config(**overrides: Any) -> OrchestratorConfig:
    """Short deadlines (virtual or real seconds) so timeouts are cheap to reach."""
    base: dict[str, Any] = {
        "threshold_bytes": THRESHOLD,
        "wake_gate": GatePolicy(deadline_s=5.0),
        "release_gate": GatePolicy(deadline_s=2.0),
        "resume_gate": GatePolicy(deadline_s=2.0, settle_samples=1),
        "call_timeout_s": 3.0,
        "drain_timeout_s": 1.0,
        "pid_namespace": "host",
    }
    base.update(overrides)
    return OrchestratorConfig(**base)


# --- await points ---------------------------------------------------------------------------


@dataclass
class Hit:
    n: int
    label: str
    states: dict[str, State]  # every engine's state when the await point was reached


@dataclass
class Checkpoints:
    """Counts await points; cancels ``scope`` at the ``cancel_at``-th one (1-based)."""

    cancel_at: int | None = None
    scope: anyio.CancelScope | None = None
    on_hit: Callable[[Hit], None] | None = None
    hits: list[Hit] = field(default_factory=list)
    orch: Orchestrator | None = None
    cancelled: Hit | None = None
    armed: bool = False  # count only while armed (not during set-up)

    async def hit(self, label: str) -> None:
        if not self.armed:
            await anyio.lowlevel.checkpoint()
            return
        states = {e.id: e.state for e in self.orch.engines.values()} if self.orch else {}
        point = Hit(len(self.hits) + 1, label, states)
        self.hits.append(point)
        if self.on_hit is not None:
            self.on_hit(point)
        if point.n == self.cancel_at and self.scope is not None:
            self.cancelled = point
            self.scope.cancel()
        # A real await point: an emit can block on a full event-log queue, a probe or an
        # engine call always awaits. Cancellation is delivered here unless shielded.
        await anyio.lowlevel.checkpoint()


class CountingClock(VirtualClock):
    """A virtual clock whose every sleep is an await point."""

    points: Checkpoints | None = None

    async def sleep_or_wake(self, seconds: float, token: WakeToken | None) -> bool:
        if self.points is not None:
            await self.points.hit(f"sleep {seconds:g}")
        return await super().sleep_or_wake(seconds, token)


class CountingProbe:
    def __init__(self, inner: ProbeBackend, points: Checkpoints) -> None:
        self.inner = inner
        self.points = points
        self.name = inner.name

    async def devices(self) -> tuple[GpuDevice, ...]:
        return await self.inner.devices()

    async def probe(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        await self.points.hit("probe")
        return await self.inner.probe(devices)

    async def aclose(self) -> None:
        await self.inner.aclose()


class CountingAdapter:
    """Wraps an adapter: every engine call is an await point before it reaches the engine."""

    def __init__(self, inner: SimEngine, points: Checkpoints) -> None:
        self.inner = inner
        self.points = points
        self.name = inner.name
        self.engine_id = inner.engine_id

    @property
    def process_root(self) -> int | None:
        return self.inner.process_root

    async def prepare_release(self, drain_timeout_s: float) -> None:
        await self.points.hit(f"{self.engine_id}.prepare_release")
        await self.inner.prepare_release(drain_timeout_s)

    async def release(self, tags: Sequence[str] | None) -> None:
        await self.points.hit(f"{self.engine_id}.release")
        await self.inner.release(tags)

    async def resume(self, tags: Sequence[str] | None) -> None:
        await self.points.hit(f"{self.engine_id}.resume")
        await self.inner.resume(tags)

    async def finish_wake(self) -> None:
        await self.points.hit(f"{self.engine_id}.finish_wake")
        await self.inner.finish_wake()

    async def aclose(self) -> None:
        await self.inner.aclose()


# --- the recorder: log + ground truth --------------------------------------------------------


class CheckingRecorder(Recorder):
    """A recorder that checks the ledger's truth whenever an engine enters ``waking`` and
    counts its emits as await points when given :class:`Checkpoints`."""

    def __init__(
        self,
        bus: EventBus,
        run_id: str,
        clock: Clock,
        truth: Callable[[str], int | None] | None,
        threshold: int,
    ) -> None:
        super().__init__(bus, run_id, clock)
        self.truth = truth  # device key -> bytes really used now (None: not known)
        self.threshold = threshold
        self.points: Checkpoints | None = None
        self.violations: list[str] = []
        self.fail_open_seen = False
        self._order = anyio.Lock()

    async def emit(self, kind: type[E], **fields: Any) -> E:
        if kind is GateFailOpen:
            self.fail_open_seen = True
        if kind is Transition and fields.get("dst") == State.WAKING.value and self.truth:
            for key in fields.get("gpus", ()):
                used = self.truth(key)
                if used is not None and used > self.threshold and not self.fail_open_seen:
                    self.violations.append(
                        f"{fields.get('engine_id')} entered waking while {key} really held "
                        f"{used / GIB:.2f} GiB > threshold {self.threshold / GIB:.2f} GiB"
                    )
        if self.points is None:
            return await super().emit(kind, **fields)
        # An emit that waits (a full event-log queue) queues on the bus's FIFO lock: events
        # keep the order of the emit calls. The same here, around the await point.
        async with self._order:
            await self.points.hit(f"emit {kind.kind}")
            return await super().emit(kind, **fields)


# --- the rig ---------------------------------------------------------------------------------


@dataclass
class Rig:
    clock: Clock
    gpus: FakeGpus | None
    orch: Orchestrator
    recorder: CheckingRecorder
    log_path: Path
    tg: anyio.abc.TaskGroup
    points: Checkpoints | None
    status: str = "ok"
    next_pid: int = 5000
    sims: dict[str, SimEngine] = field(default_factory=dict)

    @property
    def threshold(self) -> int:
        return self.orch.config.threshold_bytes

    def dev(self, index: int) -> GpuDevice:
        assert self.gpus is not None
        return self.gpus.devices[index]

    async def add_sim(
        self,
        eid: str,
        devices: Sequence[int],
        *,
        footprint: Footprint = ENGINE_FP,
        faults: FaultPlan | None = None,
        initial: State = State.ACTIVE,
        pipeline_id: str | None = None,
        share_group: str | None = None,
        **spec: Any,
    ) -> SimEngine:
        """A simulated engine on ``devices`` (indices), registered; slept ones start released."""
        assert self.gpus is not None
        self.next_pid += 1
        sim = SimEngine(eid, self.gpus, list(devices), pid=self.next_pid, footprint=footprint)
        if initial is State.SLEPT:
            await sim.prepare_release(1.0)
            await sim.release(None)
        if faults is not None:
            sim.faults = faults
        adapter: Any = sim if self.points is None else CountingAdapter(sim, self.points)
        pid = sim.pid
        await self.orch.register(
            EngineSpec(
                eid,
                adapter,
                sim.devices,
                pipeline_id=pipeline_id,
                share_group=share_group,
                initial=initial,
                pids=lambda: frozenset({pid}),
                **spec,
            )
        )
        self.sims[eid] = sim
        return sim


def ledger_truth(gpus: FakeGpus) -> Callable[[str], int | None]:
    return lambda key: gpus.used(key)


@asynccontextmanager
async def open_rig(
    directory: Path,
    *,
    gpu_count: int = 4,
    clock: Clock | None = None,
    gpus: FakeGpus | None = None,
    probe: ProbeBackend | Callable[[FakeGpus], ProbeBackend] | None = None,
    truth: Callable[[str], int | None] | None = None,
    points: Checkpoints | None = None,
    config: OrchestratorConfig | None = None,
    retry: RetryPolicy | None = None,
    **config_overrides: Any,
) -> AsyncIterator[Rig]:
    """A run: orchestrator + event log at ``directory/run.jsonl``; finishes the run on exit."""
    if clock is None:
        clock = CountingClock() if points is not None else VirtualClock()
    if isinstance(clock, CountingClock):
        clock.points = points
    if gpus is None and (probe is None or callable(probe)):
        gpus = FakeGpus(make_devices(gpu_count), clock)
    if probe is None:
        assert gpus is not None
        backend: ProbeBackend = FakeBackend(gpus)
    elif isinstance(probe, ProbeBackend):
        backend = probe
    else:
        assert gpus is not None
        backend = probe(gpus)
    if points is not None:
        backend = CountingProbe(backend, points)  # type: ignore[assignment]
    if truth is None and gpus is not None:
        truth = ledger_truth(gpus)
    cfg = config or fast_config(**config_overrides)
    bus = EventBus()
    recorder = CheckingRecorder(bus, "reliability", clock, truth, cfg.threshold_bytes)
    recorder.points = points
    if retry is not None:  # retries and give-ups are events in the log
        backend = RetryingProbe(
            backend, policy=retry, clock=clock, rng=random.Random(0), recorder=recorder
        )
    os.makedirs(directory, exist_ok=True)
    path = directory / "run.jsonl"
    sub = bus.subscribe("event-log", capacity=1_000_000)
    orch = Orchestrator(probe=backend, recorder=recorder, config=cfg, clock=clock)
    if points is not None:
        points.orch = orch
    with EventLogWriter(path) as writer:
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, sub)
            rig = Rig(clock, gpus, orch, recorder, path, tg, points)
            await orch.start_run(command="tests/reliability", backend=backend.name)
            try:
                yield rig
            finally:
                with anyio.CancelScope(shield=True):
                    if points is not None:
                        points.scope = None  # nothing more to cancel
                    await orch.finish_run(rig.status)
                    bus.close()


# --- the log check -----------------------------------------------------------------------------


@dataclass
class LogCheck:
    events: list[Event]
    states: dict[str, str]  # replayed state per engine
    gpus: dict[str, tuple[str, ...]]

    def of(self, cls: type[E], engine: str | None = None) -> list[E]:
        return [
            e
            for e in self.events
            if isinstance(e, cls) and (engine is None or e.engine_id == engine)
        ]

    def transitions(self, engine: str) -> list[Transition]:
        return self.of(Transition, engine)

    def path(self, engine: str) -> list[str]:
        return [t.dst for t in self.transitions(engine)]

    def last_reason(self, engine: str) -> str:
        return self.transitions(engine)[-1].reason or ""

    def text(self) -> str:
        """Every string field of every event, for "the log names the cause" checks."""
        return "\n".join(str(dataclasses.asdict(e)) for e in self.events)


def check_log(rig: Rig, *, complete: bool = True) -> LogCheck:
    """Read the rig's log back and check what every row promises:

    - complete: every line whole and decodable, ``run_started`` first, ``run_finished`` last;
    - replayable: every transition legal in the lifecycle TABLE from the replayed state, and
      replayed states equal the orchestrator's;
    - safe: every opened wake decision measured every GPU at or under a limit that is at or
      under the run's threshold; no engine entered ``waking`` without such a decision (or a
      logged fail-open) since it entered ``gated``; no two engines sharing a GPU (outside a
      share group) awake together; and the ledger's truth at every wake was under the
      threshold (checked live by the recorder);
    - and the replay module agrees.
    """
    assert not rig.recorder.violations, rig.recorder.violations
    events, report = load_events(rig.log_path)
    problems = _problems(events, report, complete)
    assert not problems, "\n".join(problems)
    check = _replay(events)
    for eid, eng in rig.orch.engines.items():
        assert check.states[eid] == eng.state.value, (eid, check.states[eid], eng.state)
    _replay_module(rig, check)
    return check


def _problems(events: list[Event], report: Any, complete: bool) -> list[str]:
    out = []
    if report.truncated is not None:
        out.append(f"truncated: {report.truncated}")
    if not events or not isinstance(events[0], RunStarted):
        out.append("the log does not start with run_started")
    if complete and not isinstance(events[-1], RunFinished):
        out.append(f"the log does not end with run_finished: {events[-1] if events else None}")
    seqs = [e.seq for e in events]
    if seqs != sorted(set(seqs)):
        out.append("sequence numbers are not strictly increasing")
    return out


def _replay(events: list[Event]) -> LogCheck:
    run = events[0]
    assert isinstance(run, RunStarted)
    threshold = run.threshold_bytes
    states: dict[str, str] = {}
    gpus: dict[str, tuple[str, ...]] = {}
    groups: dict[str, str | None] = {}
    cleared: dict[str, bool] = {}  # engine -> an opened wake decision since it was gated
    for ev in events:
        if isinstance(ev, EngineRegistered):
            eid = ev.engine_id or ""
            assert eid not in states, f"{eid} registered twice"
            states[eid], gpus[eid], groups[eid] = ev.initial_state, ev.gpus, ev.share_group
        elif isinstance(ev, GateDecision) and ev.gate == "wake" and ev.opened:
            assert threshold is not None and ev.limit_bytes is not None
            assert ev.limit_bytes <= threshold, f"seq {ev.seq}: limit above the run's threshold"
            for key, seen in zip(ev.gpus, ev.observed_bytes, strict=True):
                assert seen is not None, f"seq {ev.seq}: wake gate opened with {key} unmeasured"
                assert seen <= ev.limit_bytes, f"seq {ev.seq}: opened with {key} at {seen}"
            _clear(cleared, states, gpus, ev.engine_id, ev.gpus)
        elif isinstance(ev, GateFailOpen) and ev.gate == "wake":
            assert run.fail_open, f"seq {ev.seq}: fail-open in a run not configured for it"
            _clear(cleared, states, gpus, ev.engine_id, ev.gpus)
        elif isinstance(ev, Transition):
            eid = ev.engine_id or ""
            assert states.get(eid) == ev.src, f"seq {ev.seq}: {eid} {states.get(eid)} != {ev.src}"
            legal = TABLE.get((State(ev.src), Trigger(ev.trigger)), frozenset())
            assert State(ev.dst) in legal, f"seq {ev.seq}: {ev.src} -{ev.trigger}-> {ev.dst}"
            if ev.dst == "gated":
                cleared[eid] = False
            if ev.src == "gated" and ev.dst == "waking":
                assert cleared.get(eid), f"seq {ev.seq}: {eid} woke without an opened wake gate"
            if ev.dst == "failed":
                assert ev.reason, f"seq {ev.seq}: {eid} failed without a reason"
            states[eid] = ev.dst
            _exclusive(states, gpus, groups, ev)
    return LogCheck(events, states, gpus)


def _clear(
    cleared: dict[str, bool],
    states: dict[str, str],
    gpus: dict[str, tuple[str, ...]],
    engine_id: str | None,
    keys: tuple[str, ...],
) -> None:
    if engine_id is not None:
        cleared[engine_id] = True
        return
    for eid, state in states.items():  # a group gate names no engine: its GPUs cover them
        if state == "gated" and set(gpus[eid]) <= set(keys):
            cleared[eid] = True


def _exclusive(
    states: dict[str, str],
    gpus: dict[str, tuple[str, ...]],
    groups: dict[str, str | None],
    ev: Transition,
) -> None:
    awake = [e for e, s in states.items() if s in ("waking", "active")]
    for a in awake:
        for b in awake:
            if a < b and set(gpus[a]) & set(gpus[b]):
                same = groups[a] is not None and groups[a] == groups[b]
                assert same, f"seq {ev.seq}: {a} and {b} awake together on a shared GPU"


def _replay_module(rig: Rig, check: LogCheck) -> None:
    """The library's own replay (``offload-fsm replay``) and the testing kit's assertions
    (what users check their pipelines with) must agree and find nothing."""
    log = EventLog(check.events)
    assert_no_wake_over_threshold(log)
    if log.finished is not None:
        assert_replays_clean(log)
    result = replay_path(rig.log_path)
    assert result.ok, [str(v) for v in result.violations]
    assert not result.truncated
    assert {e: t.state for e, t in result.engines.items()} == check.states
