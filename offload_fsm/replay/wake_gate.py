"""Rule 2, the wake gate: ``gated -> waking`` only after a wake gate decision that opened with
every GPU measured at or under a limit within the run's threshold, after the settle window (or
a logged fail-open pass in a run configured fail-open). An opened wake decision also records the
reading it opened on as the GPU's residual.
"""

from __future__ import annotations

from offload_fsm.core.lifecycle import State
from offload_fsm.events.kinds import Event, GateDecision, GateFailOpen
from offload_fsm.replay.display import gib, short_gpu
from offload_fsm.replay.rules import Rule
from offload_fsm.replay.state import ReplayState
from offload_fsm.replay.tracks import EngineTrack

_GATED = State.GATED.value


class WakeGateChecks(ReplayState):
    """Each engine's latest wake gate decision and fail-open pass, checked when it wakes."""

    def _check_wake(self, eng: EngineTrack, line: int, ev: Event) -> None:
        run = self.run
        assert run is not None
        if run.threshold_bytes is None or eng.wake_pass_line is not None:
            return
        if eng.fail_open_line is not None:
            eng.fail_open_wakes += 1
            return
        since = (
            f"since it entered gated at line {eng.gated_line}"
            if eng.gated_line is not None
            else "and it was not gated"
        )
        last = eng.last_wake_decision
        detail = (
            eng.wake_bad
            or (
                last
                and f"the last wake decision (line {last[0]}) stayed closed: {_observed(last[1])}"
            )
            or "no wake gate decision was logged"
        )
        self._violate(
            Rule.WAKE_GATE,
            line,
            ev,
            f"entered waking without a passing wake gate decision {since}; {detail}",
            engine_id=eng.engine_id,
            gpus=eng.gpus,
        )

    def _gate_decision(self, line: int, ev: GateDecision) -> None:
        if ev.gate != "wake":
            return
        if ev.opened:
            # What the engine is about to wake onto (memory samples are only logged when
            # memory moves; the reading that opened the gate is the residual that counts).
            gpus = self.gpus
            for gpu, nbytes in zip(ev.gpus, ev.observed_bytes, strict=False):
                track = gpus.get(gpu)
                if track is None or nbytes is None:
                    continue
                if track.peak_residual is None or nbytes > track.peak_residual:
                    track.peak_residual, track.peak_residual_ts = nbytes, ev.ts
        if ev.engine_id is None:
            return  # a gate evaluated outside any engine (e.g. the CLI): nothing to wake
        eng = self._engine(line, ev)
        if eng is None or eng.state != _GATED:
            return
        # Only the latest wake decision counts: a gate that opened and was then re-run
        # (a blocker appeared) must open again before the wake.
        eng.wake_pass_line = eng.wake_bad = None
        if not ev.opened:
            eng.last_wake_decision = (line, ev)  # formatted only if a violation needs it
            return
        problems = self._wake_problems(eng, ev)
        if problems:
            eng.wake_bad = f"the gate opened at line {line} but " + "; ".join(problems)
        else:
            eng.wake_pass_line = line

    def _wake_problems(self, eng: EngineTrack, ev: GateDecision) -> list[str]:
        run = self.run
        assert run is not None
        threshold = run.threshold_bytes
        limit = ev.limit_bytes
        problems: list[str] = []
        if len(ev.observed_bytes) != len(ev.gpus):
            problems.append(
                f"it has {len(ev.observed_bytes)} observed values for {len(ev.gpus)} GPUs"
            )
        missed = [g for g in eng.gpus if g not in ev.gpus]
        if missed:
            problems.append(f"it did not measure {', '.join(short_gpu(g) for g in missed)}")
        if limit is None:
            problems.append("it had no limit")
        elif threshold is not None and limit > threshold:
            problems.append(f"its limit {gib(limit)} is above the run's threshold {gib(threshold)}")
        for gpu, nbytes in zip(ev.gpus, ev.observed_bytes, strict=False):
            if nbytes is None:
                problems.append(f"{short_gpu(gpu)} was not measured")
            elif limit is not None and nbytes > limit:
                problems.append(f"{short_gpu(gpu)} used {gib(nbytes)} > limit {gib(limit)}")
        if ev.settle_count < ev.settle_required:
            problems.append(f"it settled {ev.settle_count} of {ev.settle_required} rounds")
        if ev.settle_required < run.settle_samples:
            problems.append(
                f"its settle window {ev.settle_required} is shorter than the run's "
                f"{run.settle_samples}"
            )
        return problems

    def _fail_open(self, line: int, ev: GateFailOpen) -> None:
        self.failures[f"gate_fail_open:{ev.gate}"] += 1
        if ev.gate != "wake" or ev.engine_id is None:
            return
        eng = self._engine(line, ev)
        if eng is None:
            return
        run = self.run
        assert run is not None
        if not run.fail_open:
            self._violate(
                Rule.WAKE_GATE,
                line,
                ev,
                "a fail-open pass in a run configured fail_open=false",
                gpus=eng.gpus,
            )
        elif eng.state == _GATED:
            eng.fail_open_line = line


def _observed(ev: GateDecision) -> str:
    parts = [f"{short_gpu(g)}={gib(b)}" for g, b in zip(ev.gpus, ev.observed_bytes, strict=False)]
    return f"{', '.join(parts)} vs limit {gib(ev.limit_bytes)}"
