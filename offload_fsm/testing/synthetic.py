"""Synthetic event logs of any size, for tests of log consumers: a deterministic
dual-pipeline run written event by event, with no orchestrator and no event loop.

Where :class:`~offload_fsm.testing.World` runs the real orchestrator (the logs it records are
what a run writes), this generator writes a million events in seconds: for replay, summaries,
traces, metrics or a user's own dashboard over the JSONL log. It drives real
:class:`~offload_fsm.core.lifecycle.Lifecycle` objects (the ground truth a replay must reproduce,
kept in ``SimOutcome.history`` when asked) over a memory model of 4 GPUs in the dual topology
used in practice (P1 train=[0] infer=[0,1,2]; P2 train=[3] infer=[1,2,3]). Each tick is one
probe round: a memory sample per GPU, release progress, wake gate decisions for gated engines
(settle window, timeout), resume progress. Randomness (release time, co-tenant processes that
hold a GPU for a while, failed calls) comes from one seeded ``random.Random``: the same config
gives the same log, byte for byte.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from offload_fsm import __version__
from offload_fsm.core.lifecycle import Evidence, Lifecycle, State, Trigger
from offload_fsm.events import codec
from offload_fsm.events.kinds import (
    AdapterCallFailed,
    AdapterCallFinished,
    AdapterCallStarted,
    AttributionReport,
    EngineRegistered,
    Event,
    GateDecision,
    GateTimedOut,
    MemorySample,
    PhaseChanged,
    RunFinished,
    RunStarted,
    Transition,
)
from offload_fsm.probe.base import GIB
from offload_fsm.testing.log_builder import GPUS, TOTAL

E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class SyntheticEngine:
    engine_id: str
    pipeline_id: str
    role: str  # "engine" | "trainer"
    gpus: tuple[int, ...]
    footprint: int  # bytes per GPU while awake
    residual: int  # bytes per GPU left behind while slept (CUDA context, allocator pools)
    pid: int
    share_group: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(GPUS[i] for i in self.gpus))

    keys: tuple[str, ...] = field(init=False, default=())


DUAL: tuple[SyntheticEngine, ...] = (
    SyntheticEngine("p1-train", "p1", "trainer", (0,), 34 * GIB, 3 * GIB, 1100),
    SyntheticEngine("p1-infer", "p1", "engine", (0, 1, 2), 22 * GIB, int(1.7 * GIB), 1200),
    SyntheticEngine("p2-train", "p2", "trainer", (3,), 34 * GIB, 3 * GIB, 2100),
    SyntheticEngine("p2-infer", "p2", "engine", (1, 2, 3), 22 * GIB, int(1.7 * GIB), 2200),
)
# Who is awake in each half of a step: P1 rolls out while P2 trains, then they swap.
CONFIGS: tuple[frozenset[str], frozenset[str]] = (
    frozenset({"p1-infer", "p2-train"}),
    frozenset({"p1-train", "p2-infer"}),
)


@dataclass
class SimConfig:
    steps: int = 5
    seed: int = 0
    threshold: int = 7 * GIB
    settle: int = 2
    tick_s: float = 0.5
    phase_ticks: int = 6  # probe rounds of rollout/training between switches
    gate_timeout_ticks: int = 16
    co_tenant_p: float = 0.0  # per switch: a foreign process holds one GPU for a while
    release_fail_p: float = 0.0  # per release: the call fails, the engine recovers
    wake_fail_p: float = 0.0  # per resume: the call fails, the engine recovers
    fail_open: bool = False
    attribution: bool = True
    run_id: str = "sim-dual"
    start_ts: float = 1_700_000_000.0

    def __post_init__(self) -> None:
        if self.gate_timeout_ticks <= self.settle:
            raise ValueError("gate_timeout_ticks must exceed settle, or no wake ever opens")


@dataclass
class SimOutcome:
    final_states: dict[str, str]
    events: int
    transitions: int
    # (seq, engine, state after) for every transition, when asked for
    history: list[tuple[int, str, str]] = field(default_factory=list)


class DualSim:
    """One simulated run; ``run()`` emits every event to ``sink`` in order."""

    def __init__(
        self,
        cfg: SimConfig,
        sink: Callable[[Event], None],
        *,
        engines: Sequence[SyntheticEngine] = DUAL,
        record_history: bool = False,
    ) -> None:
        self.cfg = cfg
        self.sink = sink
        self.rng = random.Random(cfg.seed)
        self.specs = {e.engine_id: e for e in engines}
        self.seq = 0
        self.ts = cfg.start_ts
        self.events = 0
        self.transitions = 0
        self.record = record_history
        self.history: list[tuple[int, str, str]] = []
        self.lc: dict[str, Lifecycle] = {}
        self.mem: dict[str, int] = {}  # engine -> bytes it holds on each of its GPUs
        self.foreign: dict[int, tuple[int, int]] = {}  # gpu -> (bytes, ticks left)
        self.work: dict[str, dict[str, Any]] = {}  # engine -> in-flight call / gate state
        self.wanted: frozenset[str] = CONFIGS[0]
        self.on_gpu = [[e for e, s in self.specs.items() if g in s.gpus] for g in range(len(GPUS))]

    def emit(self, kind: type[E], **fields: Any) -> E:
        self.seq += 1
        event = kind(seq=self.seq, ts=round(self.ts, 6), run_id=self.cfg.run_id, **fields)
        self.events += 1
        self.sink(event)
        return event

    def fire(
        self, eid: str, trigger: Trigger, *, reason: str | None = None, target: State | None = None
    ) -> None:
        evidence = Evidence(target, "simulated probe: resident at residual") if target else None
        step = self.lc[eid].fire(trigger, reason=reason, evidence=evidence)
        spec = self.specs[eid]
        ev = self.emit(
            Transition,
            engine_id=eid,
            pipeline_id=spec.pipeline_id,
            gpus=spec.keys,
            src=step.src.value,
            dst=step.dst.value,
            trigger=step.trigger.value,
            reason=reason,
            evidence=evidence.observed if evidence else None,
        )
        self.transitions += 1
        if self.record:
            self.history.append((ev.seq, eid, step.dst.value))

    def used(self, gpu: int) -> int:
        mem = self.mem
        return sum(mem[e] for e in self.on_gpu[gpu]) + self.foreign.get(gpu, (0, 0))[0]

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> SimOutcome:
        cfg = self.cfg
        self.emit(
            RunStarted,
            tool_version=__version__,
            threshold_bytes=cfg.threshold,
            settle_samples=cfg.settle,
            fail_open=cfg.fail_open,
            backend="fake",
            command="offload_fsm.testing.synthetic",
        )
        for eid, spec in self.specs.items():
            awake = eid in self.wanted
            state = State.ACTIVE if awake else State.SLEPT
            self.lc[eid] = Lifecycle(eid, initial=state)
            self.mem[eid] = spec.footprint if awake else spec.residual
            self.emit(
                EngineRegistered,
                engine_id=eid,
                pipeline_id=spec.pipeline_id,
                gpus=spec.keys,
                role=spec.role,
                adapter="sim",
                initial_state=state.value,
                process_root=spec.pid,
                share_group=spec.share_group,
            )
        for step in range(cfg.steps):
            self.emit(PhaseChanged, step=step, phase="rollout")
            for _ in range(cfg.phase_ticks):
                self.tick()
            self.wanted = CONFIGS[(step + 1) % 2]
            self.emit(PhaseChanged, step=step, phase="switch")
            if self.rng.random() < cfg.co_tenant_p:
                gpu = self.rng.randrange(len(GPUS))
                self.foreign[gpu] = (self.rng.randint(6, 12) * GIB, self.rng.randint(2, 30))
            self.switch()
        self.emit(RunFinished, status="ok")
        return SimOutcome(
            final_states={e: lc.state.value for e, lc in self.lc.items()},
            events=self.events,
            transitions=self.transitions,
            history=self.history,
        )

    def switch(self) -> None:
        for _ in range(2_000):
            if all(self.settled(e) for e in self.specs):
                return
            self.tick()
        raise AssertionError("simulated switch did not converge")  # pragma: no cover

    def settled(self, eid: str) -> bool:
        want = State.ACTIVE if eid in self.wanted else State.SLEPT
        return self.lc[eid].state is want and eid not in self.work

    def tick(self) -> None:
        self.ts += self.cfg.tick_s
        for gpu, (nbytes, left) in list(self.foreign.items()):
            if left <= 1:
                del self.foreign[gpu]
            else:
                self.foreign[gpu] = (nbytes, left - 1)
        for eid in self.specs:  # start what the wanted configuration needs
            self.drive(eid)
        round_used = [self.used(g) for g in range(len(GPUS))]
        for gpu, key in enumerate(GPUS):
            used = round_used[gpu] + self.jitter(gpu)
            self.emit(
                MemorySample,
                gpus=(key,),
                backend="fake",
                used_bytes=used,
                free_bytes=TOTAL - used,
                total_bytes=TOTAL,
            )
        for eid in self.specs:
            self.advance(eid, round_used)

    def jitter(self, gpu: int) -> int:
        # Awake engines' memory moves a little while they work; it never crosses the gate.
        busy = any(self.lc[e].state is State.ACTIVE for e, s in self.specs.items() if gpu in s.gpus)
        return self.rng.randrange(0, GIB // 2) if busy else 0

    def call(self, eid: str, name: str, **state: Any) -> None:
        spec = self.specs[eid]
        self.emit(
            AdapterCallStarted,
            engine_id=eid,
            pipeline_id=spec.pipeline_id,
            gpus=spec.keys,
            call=name,
        )
        self.work[eid] = {"call": name, "t0": self.ts, **state}

    def drive(self, eid: str) -> None:
        lc, spec = self.lc[eid], self.specs[eid]
        if eid in self.work:
            return
        if lc.state is State.FAILED:
            self.fire(eid, Trigger.RECOVER, target=State.SLEPT)
            self.mem[eid] = spec.residual
        elif lc.state is State.ACTIVE and eid not in self.wanted:
            self.fire(eid, Trigger.RELEASE)
            self.call(eid, "release_memory", left=self.rng.randint(1, 3))
        elif lc.state is State.SLEPT and eid in self.wanted:
            self.fire(eid, Trigger.REQUEST_WAKE)
            self.work[eid] = {"call": None, "settle": 0, "waited": 0}

    def advance(self, eid: str, round_used: list[int]) -> None:
        work = self.work.get(eid)
        if work is None:
            return
        state = self.lc[eid].state
        if state is State.RELEASING:
            self.advance_release(eid, work)
        elif state is State.GATED:
            self.advance_gate(eid, work, round_used)
        elif state is State.WAKING:
            self.advance_wake(eid, work)

    def finish_call(self, eid: str, work: dict[str, Any], error: str | None = None) -> None:
        spec = self.specs[eid]
        common: dict[str, Any] = {
            "engine_id": eid,
            "pipeline_id": spec.pipeline_id,
            "gpus": spec.keys,
            "call": work["call"],
            "elapsed_s": round(self.ts - work["t0"], 6),
        }
        if error:
            self.emit(AdapterCallFailed, error_type="EngineCallTimeout", error=error, **common)
        else:
            self.emit(AdapterCallFinished, **common)
        del self.work[eid]

    def advance_release(self, eid: str, work: dict[str, Any]) -> None:
        spec = self.specs[eid]
        work["left"] -= 1
        step = (self.mem[eid] - spec.residual) // max(1, work["left"] + 1)
        self.mem[eid] = max(spec.residual, self.mem[eid] - step)
        if work["left"] > 0:
            return
        self.mem[eid] = spec.residual
        if self.rng.random() < self.cfg.release_fail_p:
            self.finish_call(eid, work, "release_memory_occupation timed out after 30 s")
            self.fire(eid, Trigger.FAIL, reason="release call timed out")
            return
        self.finish_call(eid, work)
        self.emit(
            GateDecision,
            engine_id=eid,
            pipeline_id=spec.pipeline_id,
            gpus=spec.keys,
            gate="release",
            passed=True,
            opened=True,
            observed_bytes=tuple(spec.residual for _ in spec.gpus),
            limit_bytes=2 * GIB,
            settle_count=1,
            settle_required=1,
            attempt=1,
            elapsed_s=0.0,
        )
        self.fire(eid, Trigger.RELEASED)
        if self.cfg.attribution:
            used = tuple(self.used(g) for g in spec.gpus)
            self.emit(
                AttributionReport,
                engine_id=eid,
                pipeline_id=spec.pipeline_id,
                gpus=spec.keys,
                used_bytes=used,
                engine_resident_bytes=tuple(spec.residual for _ in spec.gpus),
                unattributed_bytes=tuple(0 for _ in spec.gpus),
                context="after_release",
            )

    def advance_gate(self, eid: str, work: dict[str, Any], round_used: list[int]) -> None:
        spec, cfg = self.specs[eid], self.cfg
        observed = tuple(round_used[g] for g in spec.gpus)
        passed = all(b <= cfg.threshold for b in observed)
        work["settle"] = work["settle"] + 1 if passed else 0
        work["waited"] += 1
        opened = work["settle"] >= cfg.settle
        self.emit(
            GateDecision,
            engine_id=eid,
            pipeline_id=spec.pipeline_id,
            gpus=spec.keys,
            gate="wake",
            passed=passed,
            opened=opened,
            observed_bytes=observed,
            limit_bytes=cfg.threshold,
            settle_count=work["settle"],
            settle_required=cfg.settle,
            attempt=work["waited"],
            elapsed_s=round(work["waited"] * cfg.tick_s, 6),
        )
        if opened:
            del self.work[eid]
            self.fire(eid, Trigger.GATE_OPEN)
            self.call(eid, "resume_memory", left=2)
        elif work["waited"] >= cfg.gate_timeout_ticks:
            self.emit(
                GateTimedOut,
                engine_id=eid,
                pipeline_id=spec.pipeline_id,
                gpus=spec.keys,
                gate="wake",
                last_bytes=observed,
                limit_bytes=cfg.threshold,
                elapsed_s=round(work["waited"] * cfg.tick_s, 6),
            )
            del self.work[eid]
            self.fire(eid, Trigger.GATE_TIMEOUT)  # back to slept; drive() asks again

    def advance_wake(self, eid: str, work: dict[str, Any]) -> None:
        spec = self.specs[eid]
        work["left"] -= 1
        if work["left"] > 0:
            self.mem[eid] = (self.mem[eid] + spec.footprint) // 2
            return
        if self.rng.random() < self.cfg.wake_fail_p:
            self.mem[eid] = spec.residual
            self.finish_call(eid, work, "resume_memory_occupation: connection reset")
            self.fire(eid, Trigger.FAIL, reason="resume call failed")
            return
        self.mem[eid] = spec.footprint
        self.finish_call(eid, work)
        self.fire(eid, Trigger.WOKEN)


def simulate(cfg: SimConfig, *, record_history: bool = False) -> tuple[list[Event], SimOutcome]:
    events: list[Event] = []
    outcome = DualSim(cfg, events.append, record_history=record_history).run()
    return events, outcome


def write_sim_log(path: Path, cfg: SimConfig, *, record_history: bool = False) -> SimOutcome:
    """Simulate straight into a JSONL file (memory stays flat: used by the bench)."""
    with open(path, "wb", buffering=1 << 20) as f:
        write, encode = f.write, codec.encode

        def sink(event: Event) -> None:
            write(encode(event) + b"\n")

        return DualSim(cfg, sink, record_history=record_history).run()
