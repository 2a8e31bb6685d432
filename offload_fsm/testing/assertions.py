"""Assertions that read like the domain. Each takes an :class:`EventLog` (a world's
``log``, or :meth:`EventLog.read` of a real run's JSONL log) and fails with an
``AssertionError`` whose message names the event (seq and kind), the engine and the rule.

- :func:`assert_no_wake_over_threshold`: no engine entered ``waking`` without an opened wake
  gate decision, since it was gated, that measured every one of its GPUs at or under the
  run's threshold (or a logged fail-open pass), and, in a world, the fake GPUs really held
  no more than that at the wake;
- :func:`assert_transitions`: an engine went through exactly these states;
- :func:`assert_replays_clean`: the library's own replay (``offload-fsm replay``) finds no
  broken rule in the finished log, and the world saw no broken rule outside it (a double
  resume, a gate skipped by calling a trainer directly).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from offload_fsm.core.lifecycle import State
from offload_fsm.events.kinds import EngineRegistered, Event, GateDecision, GateFailOpen, Transition
from offload_fsm.replay import RULE_TEXT, Replayer
from offload_fsm.replay.display import gib, short_gpu
from offload_fsm.testing.log import (
    FINDING_RULES,
    WAKE_OVER_THRESHOLD,
    EventLog,
    Finding,
    describe,
    findings_text,
)

_WAKE_RULE = f"{WAKE_OVER_THRESHOLD}: {FINDING_RULES[WAKE_OVER_THRESHOLD]}"


def _fail(lines: Sequence[str], rule: str) -> None:
    shown = "\n".join(f"  {line}" for line in lines[:20])
    more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
    raise AssertionError(f"{len(lines)} broken: {rule}\n{shown}{more}")


def assert_no_wake_over_threshold(log: EventLog) -> None:
    """Every ``gated -> waking`` had an opened wake gate decision measuring every GPU of the
    engine at or under the run's threshold (module docstring)."""
    run = log.run
    if run is None:
        raise AssertionError("the log does not start with run_started: not a run's log")
    threshold = run.threshold_bytes
    engines = log.engines
    opened: dict[str, Event | None] = {}  # engine -> the opened wake decision / fail-open
    broken: list[str] = []
    for ev in log.events:
        if isinstance(ev, Transition) and ev.engine_id is not None:
            eid = ev.engine_id
            if ev.dst == State.GATED.value:
                opened[eid] = None
            elif ev.dst == State.WAKING.value:
                problem = _wake_problem(ev, opened.get(eid), threshold)
                if problem:
                    broken.append(f"engine {eid!r} at {describe(ev)}: {problem}")
        elif _opens_wake(ev):
            for eid in _covered(ev, engines, opened):
                opened[eid] = ev
    broken += [str(f) for f in log.findings if f.rule == WAKE_OVER_THRESHOLD]
    if broken:
        _fail(broken, _WAKE_RULE)


def _opens_wake(ev: Event) -> bool:
    """An opened wake gate decision, or a logged fail-open pass of a wake gate."""
    if isinstance(ev, GateDecision):
        return ev.gate == "wake" and ev.opened
    return isinstance(ev, GateFailOpen) and ev.gate == "wake"


def _covered(
    ev: Event, engines: Mapping[str, EngineRegistered], opened: dict[str, Event | None]
) -> list[str]:
    """The gated engines a wake decision speaks for: its engine, or (a group gate names
    none) every gated engine whose GPUs it measured."""
    if ev.engine_id is not None:
        return [ev.engine_id]
    keys = set(ev.gpus)
    return [
        eid for eid in opened if eid in engines and set(getattr(engines[eid], "gpus", ())) <= keys
    ]


def _wake_problem(ev: Transition, decision: Event | None, threshold: int | None) -> str:
    if ev.src != State.GATED.value:
        return f"it entered waking from {ev.src}, not through the wake gate (gated)"
    if decision is None:
        return "no wake gate decision opened since it was gated"
    if isinstance(decision, GateFailOpen):
        return ""  # loud and logged: replay's rule 2 judges whether the run allowed it
    assert isinstance(decision, GateDecision)
    if threshold is None:
        return ""  # a run without a wake gate: nothing to exceed
    over = [
        f"{short_gpu(g)} {'unmeasured' if b is None else gib(b)}"
        for g, b in zip(decision.gpus, decision.observed_bytes, strict=False)
        if b is None or b > threshold
    ]
    if over:
        return (
            f"the wake gate decision it woke on (seq {decision.seq}) saw {', '.join(over)} "
            f"> threshold {gib(threshold)}"
        )
    return ""


def assert_transitions(log: EventLog, engine: str, expected: Sequence[str | State]) -> None:
    """``engine`` went through exactly the states ``expected`` (each transition's target,
    in order; the initial state left out), e.g. ``["gated", "waking", "active"]``."""
    want = [s.value if isinstance(s, State) else str(s) for s in expected]
    unknown = [s for s in want if s not in {x.value for x in State}]
    if unknown:
        raise AssertionError(
            f"expected states {unknown} are not lifecycle states {[x.value for x in State]}"
        )
    transitions = log.transitions(engine)
    got = [t.dst for t in transitions]
    if got == want:
        return
    path = " -> ".join(log.states(engine))
    for i, (t, w) in enumerate(zip(transitions, want, strict=False)):
        if t.dst != w:
            raise AssertionError(
                f"[transitions] engine {engine!r}: transition {i + 1} ({describe(t)}) "
                f"went to {t.dst!r}, expected {w!r}\n  path:     {path}\n  expected: "
                + " -> ".join([log.states(engine)[0], *want])
            )
    if len(got) > len(want):
        extra = transitions[len(want)]
        raise AssertionError(
            f"[transitions] engine {engine!r}: an unexpected transition {len(want) + 1} "
            f"({describe(extra)}) after the {len(want)} expected\n  path: {path}"
        )
    raise AssertionError(
        f"[transitions] engine {engine!r}: only {len(got)} transition(s), expected "
        f"{len(want)}; missing {want[len(got) :]}\n  path: {path}"
    )


def assert_replays_clean(log: EventLog) -> None:
    """The finished log breaks none of replay's rules (docs/replay.md), and the world saw
    nothing broken outside it (module docstring)."""
    if log.finished is None:
        raise AssertionError(
            "the log has no run_finished: the end-of-run rules cannot be checked "
            "(call `await world.finish()` first)"
        )
    replayer = Replayer(path="<test log>")
    for line, event in enumerate(log.events, start=1):
        replayer.feed(line, event)
    result = replayer.finish()
    lines = [
        f"[{v.rule}] engine {v.engine_id!r} at seq {v.seq} (line {v.line}): {v.message}\n"
        f"    rule: {RULE_TEXT[v.rule]}"
        for v in result.violations
    ]
    findings: list[Finding] = list(log.findings)
    if not lines and not findings:
        return
    text = "\n".join(f"  {x}" for x in lines)
    if findings:
        text += ("\n" if text else "") + findings_text(findings)
    raise AssertionError(
        f"the run broke {len(lines) + len(findings)} rule(s) "
        f"({len(lines)} in the event log, {len(findings)} seen by the world):\n{text}"
    )
