"""Replay: one passing and one violating hand-written log per invariant, the real incident,
corrupted inputs, state reconstruction and the command's exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload_fsm.commands.cli import main
from offload_fsm.core.errors import EventDecodeError
from offload_fsm.events import codec
from offload_fsm.events.kinds import RunFinished, Transition
from offload_fsm.probe.base import GIB
from offload_fsm.replay import LEGAL, ReplayResult, Rule, replay_path
from offload_fsm.replay.summary import percentile, summarize
from offload_fsm.testing.log_builder import GPUS, LogBuilder, incident_log, write_events
from offload_fsm.testing.synthetic import SimConfig, simulate


def replay(b: LogBuilder, tmp_path: Path, **kw: object) -> ReplayResult:
    return replay_path(b.write(tmp_path / "run.jsonl"), **kw)  # type: ignore[arg-type]


def rules(result: ReplayResult) -> list[tuple[str, int]]:
    return [(v.rule.value, v.line) for v in result.violations]


def two_engines(**kw: object) -> LogBuilder:
    b = LogBuilder(**kw)  # type: ignore[arg-type]
    b.engine("infer", [0, 1], "active")
    b.engine("train", [0], "slept", role="trainer")
    return b


def test_legal_view_is_the_table() -> None:
    from offload_fsm.core.lifecycle import TABLE

    assert len(LEGAL) == len(TABLE)
    for (src, trig), dsts in TABLE.items():
        assert LEGAL[(src.value, trig.value)] == {d.value for d in dsts}


# --- rule 1: transitions ------------------------------------------------------------------


def test_clean_cycle_replays_without_violations(tmp_path: Path) -> None:
    b = two_engines()
    b.release("infer")
    b.wake("train")
    b.t("train", "active", "releasing", "release")
    b.t("train", "releasing", "slept", "released")
    b.wake("infer")
    b.finish()
    r = replay(b, tmp_path)
    assert r.ok, [str(v) for v in r.violations]
    assert {e: t.state for e, t in r.engines.items()} == {"infer": "active", "train": "slept"}
    assert r.engines["infer"].cycles == 1 and r.engines["infer"].releases == 1
    assert not r.truncated


def test_illegal_transition_is_flagged_with_line_and_engine(tmp_path: Path) -> None:
    b = two_engines()
    b.t("infer", "active", "slept", "released")  # skipped releasing
    bad = b.line
    b.finish()
    r = replay(b, tmp_path)
    assert rules(r) == [(Rule.TRANSITION.value, bad)]
    v = r.violations[0]
    assert v.engine_id == "infer" and v.gpus == (GPUS[0], GPUS[1])
    assert "not in the lifecycle table" in v.message


def test_src_that_differs_from_replayed_state_is_flagged(tmp_path: Path) -> None:
    b = two_engines()
    b.t("train", "active", "releasing", "release")  # replay says train is slept
    bad = b.line
    b.t("train", "releasing", "slept", "released")
    b.finish()
    r = replay(b, tmp_path)
    assert rules(r) == [(Rule.TRANSITION.value, bad)]
    assert "replayed state is slept" in r.violations[0].message
    assert r.engines["train"].state == "slept"  # follows the log after reporting


@pytest.mark.parametrize(
    ("src", "dst", "trigger", "extra", "text"),
    [
        ("active", "failed", "fail", {"reason": None}, "fail without a reason"),
        ("active", "bogus", "release", {}, "not in the lifecycle table"),
        ("active", "releasing", "explode", {}, "not in the lifecycle table"),
    ],
)
def test_malformed_transitions(
    tmp_path: Path, src: str, dst: str, trigger: str, extra: dict[str, object], text: str
) -> None:
    b = two_engines()
    b.add(
        Transition,
        engine_id="infer",
        gpus=b.engines["infer"],
        src=src,
        dst=dst,
        trigger=trigger,
        **extra,
    )
    b.finish()
    r = replay(b, tmp_path)
    assert next(v.rule for v in r.violations) is Rule.TRANSITION
    assert text in r.violations[0].message


def test_recover_needs_evidence(tmp_path: Path) -> None:
    b = two_engines()
    b.t("infer", "active", "failed", "fail")
    b.add(
        Transition,
        engine_id="infer",
        gpus=b.engines["infer"],
        src="failed",
        dst="slept",
        trigger="recover",
    )
    bad = b.line
    b.finish()
    r = replay(b, tmp_path)
    assert rules(r) == [(Rule.TRANSITION.value, bad)]
    assert "evidence" in r.violations[0].message


def test_unregistered_and_twice_registered_engines(tmp_path: Path) -> None:
    b = two_engines()
    b.engine("infer", [2], "slept")
    again = b.line
    b.engines["ghost"] = (GPUS[3],)
    b.t("ghost", "active", "releasing", "release")
    ghost = b.line
    b.finish()
    r = replay(b, tmp_path)
    assert rules(r) == [(Rule.REGISTRATION.value, again), (Rule.REGISTRATION.value, ghost)]
    assert r.engines["infer"].gpus == (GPUS[0], GPUS[1])  # the first registration stands


# --- rule 2: gated wakes --------------------------------------------------------------------


def test_wake_without_any_gate_decision(tmp_path: Path) -> None:
    b = two_engines()
    b.release("infer")
    b.t("train", "slept", "gated", "request_wake")
    gated = b.line
    b.t("train", "gated", "waking", "gate_open")
    bad = b.line
    b.t("train", "waking", "active", "woken")
    b.finish()
    r = replay(b, tmp_path)
    assert rules(r) == [(Rule.WAKE_GATE.value, bad)]
    assert f"gated at line {gated}" in r.violations[0].message
    assert "no wake gate decision" in r.violations[0].message


def _gated_wake(b: LogBuilder, decide: object) -> int:
    b.release("infer")
    b.t("train", "slept", "gated", "request_wake")
    decide(b)  # type: ignore[operator]
    b.t("train", "gated", "waking", "gate_open")
    line = b.line
    b.t("train", "waking", "active", "woken")
    b.finish()
    return line


@pytest.mark.parametrize(
    ("decide", "text"),
    [
        (lambda b: b.gate("train", [9 * GIB], opened=False), "stayed closed"),
        (lambda b: b.gate("train", [None], opened=True), "was not measured"),
        (lambda b: b.gate("train", [GIB], opened=True, limit=9 * GIB), "above the run's"),
        (lambda b: b.gate("train", [GIB], opened=True, settle_count=1), "settled 1 of 2"),
        (
            lambda b: b.gate("train", [GIB], opened=True, settle_required=1, settle_count=1),
            "settle window 1 is shorter",
        ),
        (lambda b: b.gate("train", [GIB], opened=True, gpus=[1]), "did not measure"),
        (lambda b: b.gate("train", [GIB, GIB], opened=True), "2 observed values for 1 GPUs"),
        (
            lambda b: (
                b.gate("train", [GIB], opened=True),
                b.gate("train", [8 * GIB], opened=False),  # re-run after a blocker appeared
            ),
            "stayed closed",
        ),
    ],
)
def test_wake_gate_violations(tmp_path: Path, decide: object, text: str) -> None:
    b = two_engines()
    bad = _gated_wake(b, decide)
    r = replay(b, tmp_path)
    assert rules(r) == [(Rule.WAKE_GATE.value, bad)], [str(v) for v in r.violations]
    assert text in r.violations[0].message


def test_passing_settled_gate_is_clean(tmp_path: Path) -> None:
    def settle(b: LogBuilder) -> None:
        b.gate("train", [GIB], opened=False, settle_count=1)
        b.gate("train", [int(6.9 * GIB)], opened=True)

    b = two_engines()
    _gated_wake(b, settle)
    assert replay(b, tmp_path).ok


def test_a_pass_from_an_earlier_gated_period_does_not_count(tmp_path: Path) -> None:
    b = two_engines()
    b.release("infer")
    b.t("train", "slept", "gated", "request_wake")
    b.gate("train", [GIB], opened=True)
    b.t("train", "gated", "slept", "cancel_wake")
    b.t("train", "slept", "gated", "request_wake")
    b.t("train", "gated", "waking", "gate_open")
    bad = b.line
    b.t("train", "waking", "active", "woken")
    b.finish()
    r = replay(b, tmp_path)
    assert rules(r) == [(Rule.WAKE_GATE.value, bad)]
    assert r.engines["train"].gate_cancels == 1


def test_fail_open_pass_counts_only_in_a_fail_open_run(tmp_path: Path) -> None:
    ok = two_engines(fail_open=True)
    _gated_wake(ok, lambda b: b.fail_open("train"))
    r = replay(ok, tmp_path)
    assert r.ok
    assert r.engines["train"].fail_open_wakes == 1
    assert r.failures["gate_fail_open:wake"] == 1

    bad = two_engines(fail_open=False)
    _gated_wake(bad, lambda b: b.fail_open("train"))
    r = replay(bad, tmp_path)
    assert [v.rule for v in r.violations] == [Rule.WAKE_GATE, Rule.WAKE_GATE]
    assert "fail_open=false" in r.violations[0].message


def test_run_without_wake_gate_is_noted_not_checked(tmp_path: Path) -> None:
    b = two_engines(threshold=None)
    _gated_wake(b, lambda b: None)
    r = replay(b, tmp_path)
    assert r.ok
    assert any("rule 2 is not checked" in n for n in r.notes)


@pytest.mark.parametrize("with_gate_decision", [True, False])
def test_incident_29_gib_still_used_trainer_woke_anyway(
    tmp_path: Path, with_gate_decision: bool
) -> None:
    r = replay(incident_log(with_gate_decision=with_gate_decision), tmp_path)
    assert [v.rule for v in r.violations] == [Rule.WAKE_GATE]
    v = r.violations[0]
    assert v.engine_id == "p1-train" and v.gpus == (GPUS[0],)
    if with_gate_decision:
        assert "used 29.0 GiB > limit 7.0 GiB" in v.message
    s = summarize(r)
    assert s.gpus[0].peak_residual_bytes == 29 * GIB  # measured while both were "slept"


# --- rule 3: GPU sharing --------------------------------------------------------------------


def test_overlapping_engines_awake_together(tmp_path: Path) -> None:
    b = LogBuilder()
    b.engine("p1-infer", [0, 1, 2], "active")
    b.engine("p2-infer", [1, 2, 3], "slept")
    b.wake("p2-infer")  # the gate passed, but p1-infer is still active on GPUs 1 and 2
    b.finish()
    r = replay(b, tmp_path)
    assert [v.rule for v in r.violations] == [Rule.GPU_SHARING]
    v = r.violations[0]
    assert v.engine_id == "p2-infer" and v.gpus == (GPUS[1], GPUS[2])
    assert "p1-infer is active" in v.message


def test_share_group_allows_co_residence_and_disjoint_gpus_never_clash(tmp_path: Path) -> None:
    b = LogBuilder()
    b.engine("a", [0, 1], "active", share_group="rollout")
    b.engine("b", [1], "active", share_group="rollout")
    b.engine("c", [2], "active")
    b.engine("d", [3], "slept")
    b.wake("d")
    b.finish()
    assert replay(b, tmp_path).ok


def test_registering_two_awake_engines_on_one_gpu(tmp_path: Path) -> None:
    b = LogBuilder()
    b.engine("a", [0], "active", share_group="x")
    b.engine("b", [0], "active", share_group="y")
    bad = b.line
    b.finish()
    assert rules(replay(b, tmp_path)) == [(Rule.GPU_SHARING.value, bad)]


# --- rules 4 and 6: how the run ends --------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "rule"),
    [
        ([("infer", "active", "releasing", "release")], Rule.UNFINISHED),
        ([("train", "slept", "gated", "request_wake")], Rule.UNFINISHED),
        (
            [
                ("infer", "active", "failed", "fail"),
                ("train", "slept", "gated", "request_wake"),
                ("train", "gated", "slept", "gate_timeout"),
            ],
            None,
        ),
    ],
)
def test_finished_run_leaves_nothing_half_done(
    tmp_path: Path, steps: list[tuple[str, str, str, str]], rule: Rule | None
) -> None:
    b = two_engines()
    for step in steps:
        b.t(*step)
    b.finish()
    end = b.line
    r = replay(b, tmp_path)
    assert rules(r) == ([] if rule is None else [(rule.value, end)])


def test_finished_while_waking_breaks_rule_6(tmp_path: Path) -> None:
    b = two_engines()
    b.release("infer")
    b.t("train", "slept", "gated", "request_wake")
    b.gate("train", [GIB], opened=True)
    b.t("train", "gated", "waking", "gate_open")
    b.finish()
    r = replay(b, tmp_path)
    assert rules(r) == [(Rule.FINAL_STATE.value, b.line)]


def test_events_after_run_finished(tmp_path: Path) -> None:
    b = two_engines()
    b.finish()
    b.release("infer")
    r = replay(b, tmp_path)
    assert rules(r) == [(Rule.FINAL_STATE.value, b.line - 1)]


def test_log_without_run_finished_is_truncated_not_violating(tmp_path: Path) -> None:
    b = two_engines()
    b.t("infer", "active", "releasing", "release")
    r = replay(b, tmp_path)
    assert r.ok and r.truncated
    assert "infer=releasing" in r.notes[-1]
    assert summarize(r).status == "truncated"


# --- rule 5: ordering -----------------------------------------------------------------------


def test_duplicated_and_backward_sequence_numbers(tmp_path: Path) -> None:
    b = two_engines()
    b.add(RunFinished, status="ok", seq=b.seq)
    r = replay(b, tmp_path)
    assert rules(r) == [(Rule.ORDER.value, b.line)]
    assert "repeats seq" in r.violations[0].message


def test_timestamps_going_back_and_foreign_run_id(tmp_path: Path) -> None:
    b = two_engines()
    b.t("infer", "active", "failed", "fail", ts=b.ts - 5)
    back = b.line
    b.add(RunFinished, status="ok", run_id="other")
    r = replay(b, tmp_path)
    assert rules(r) == [(Rule.ORDER.value, back), (Rule.ORDER.value, b.line)]
    assert "before the last" in r.violations[0].message
    assert "'other'" in r.violations[1].message


# --- corrupted input ------------------------------------------------------------------------


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["replay", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _clean_lines() -> list[bytes]:
    b = two_engines()
    b.release("infer")
    b.finish()
    return [codec.encode(e) + b"\n" for e in b.events]


@pytest.mark.parametrize(
    ("make", "line", "text"),
    [
        (lambda ls: bytes(range(256)) * 3, 1, "line 1"),
        (lambda ls: b"", None, "no events"),
        (lambda ls: [*ls[:2], ls[2][:40] + b"\n", *ls[3:]], 3, "not valid JSON"),
        (
            lambda ls: [*ls[:3], ls[3].replace(b'"transition"', b'"teleport"'), *ls[4:]],
            4,
            "unknown event kind 'teleport'",
        ),
        (lambda ls: [*ls[:3], ls[3].replace(b'"seq":4', b'"seq":"4"'), *ls[4:]], 4, "seq"),
        (lambda ls: [*ls[:3], ls[3].replace(b'"v":1', b'"v":9'), *ls[4:]], 4, "version 9"),
        (lambda ls: [*ls[:3], ls[3].replace(b'"v":1', b'"v":0'), *ls[4:]], 4, "version 0"),
        (lambda ls: ls[1:], 1, "starts with run_started"),
        (lambda ls: [*ls, ls[0]], 7, "a second run_started"),
        (lambda ls: [*ls[:2], b"\x00\xff garbage\n", *ls[2:]], 3, "line 3"),
    ],
    ids=[
        "binary-garbage",
        "empty",
        "cut-line-mid-file",
        "unknown-kind",
        "wrong-type",
        "newer-schema",
        "older-schema",
        "no-run-started",
        "second-run",
        "garbage-line",
    ],
)
def test_unreadable_inputs_exit_2_with_line_number(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: object,
    line: int | None,
    text: str,
) -> None:
    data = make(_clean_lines())  # type: ignore[operator]
    log = tmp_path / "bad.jsonl"
    log.write_bytes(data if isinstance(data, bytes) else b"".join(data))
    code, out, err = _run_cli(capsys, str(log))
    assert code == 2, (out, err)
    assert str(log) in err and text in err
    if line is not None:
        assert f"line {line}:" in err
    with pytest.raises(EventDecodeError) as info:
        replay_path(log)
    assert info.value.line == (line if line is not None else info.value.line)


def test_wrong_type_names_the_field(tmp_path: Path) -> None:
    lines = _clean_lines()
    lines[3] = lines[3].replace(b'"src":"active"', b'"src":7')
    log = tmp_path / "bad.jsonl"
    log.write_bytes(b"".join(lines))
    with pytest.raises(EventDecodeError) as info:
        replay_path(log)
    assert info.value.line == 4 and info.value.field == "src"


def test_truncated_last_line_is_reported_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _clean_lines()
    log = tmp_path / "crash.jsonl"
    log.write_bytes(b"".join(lines[:-1]) + lines[-1][:25])  # run_finished cut mid-write
    r = replay_path(log)
    assert r.ok and r.truncated
    assert r.truncated_line is not None and r.truncated_line.line == len(lines)
    code, out, _ = _run_cli(capsys, str(log))
    assert code == 0
    assert f"line {len(lines)} is cut short" in out and "truncated" in out


def test_last_line_without_newline_that_decodes_is_kept(tmp_path: Path) -> None:
    log = tmp_path / "ok.jsonl"
    log.write_bytes(b"".join(_clean_lines())[:-1])
    r = replay_path(log)
    assert r.ok and not r.truncated and r.finished is not None


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    lines = _clean_lines()
    log = tmp_path / "blank.jsonl"
    log.write_bytes(b"".join([*lines[:2], b"\n", *lines[2:]]))
    r = replay_path(log)
    assert r.ok and r.lines == len(lines) + 1 and r.events == len(lines)


def test_duplicated_seq_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _clean_lines()
    log = tmp_path / "dup.jsonl"
    log.write_bytes(b"".join([*lines[:4], lines[3], *lines[4:]]))
    code, out, _ = _run_cli(capsys, str(log))
    assert code == 1
    assert "line 5 seq 4 [5-order]" in out
    assert "line 5 seq 4 [1-transition]" in out  # the repeated transition is illegal too


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run_cli(capsys, str(tmp_path / "nope.jsonl"))
    assert code == 2 and "nope.jsonl" in err and "readable event log" in err


# --- reconstruction, summary, command -------------------------------------------------------


def test_until_and_engine_reconstruct_states(tmp_path: Path) -> None:
    events, outcome = simulate(SimConfig(steps=3, seed=7), record_history=True)
    log = write_events(tmp_path / "sim.jsonl", events)
    for seq, eid, state in outcome.history[::7]:
        r = replay_path(log, until=seq, history_for=eid)
        assert r.engines[eid].state == state
        assert r.last_seq == seq and r.until == seq and not r.truncated
        assert r.history is not None and r.history[-1][1].seq == seq
        assert all(t.engine_id == eid for _, t in r.history)


def test_summary_figures(tmp_path: Path) -> None:
    b = two_engines(dt=1.0)
    b.release("infer")  # infer: active 1 s (registration at t=2, release at t=4)...
    b.t("train", "slept", "gated", "request_wake")
    b.gate("train", [GIB], opened=False, settle_count=1)
    b.gate("train", [GIB], opened=True)
    b.t("train", "gated", "waking", "gate_open")  # waited 3 s
    b.t("train", "waking", "active", "woken")
    b.sample(0, 5 * GIB)  # both engines on GPU 0 at rest? no: train is active now
    b.t("train", "active", "releasing", "release")
    b.t("train", "releasing", "slept", "released")
    b.sample(0, 3 * GIB)  # now everything on GPU 0 is slept: a residual reading
    b.t("infer", "slept", "gated", "request_wake")
    b.gate("infer", [GIB, GIB], opened=True)
    b.t("infer", "gated", "waking", "gate_open")  # waited 2 s
    b.t("infer", "waking", "active", "woken")
    b.finish()
    s = summarize(replay(b, tmp_path))
    waits = {e.engine_id: e.gate_waits for e in s.engines}
    assert waits["train"].max_s == 3.0 and waits["infer"].max_s == 2.0
    assert s.gate_waits.count == 2 and s.gate_waits.p50_s == 2.5
    train = next(e for e in s.engines if e.engine_id == "train")
    assert train.time_in_state_s == {
        "active": 2.0,
        "releasing": 1.0,
        "slept": 3.0 + 6.0,
        "gated": 3.0,
        "waking": 1.0,
    }
    assert sum(train.time_in_state_s.values()) == s.duration_s - 2.0  # registered at t+2
    gpu0 = s.gpus[0]
    assert (gpu0.peak_used_bytes, gpu0.peak_residual_bytes) == (5 * GIB, 3 * GIB)
    assert (train.cycles, train.releases) == (1, 1)


def test_percentile_interpolates() -> None:
    assert percentile([], 0.5) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([float(i) for i in range(101)], 0.95) == 95.0


def test_cli_json_and_engine_view(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    log = incident_log(with_gate_decision=True).write(tmp_path / "incident.jsonl")
    code, out, _ = _run_cli(capsys, str(log), "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["violation_count"] == 1 and doc["violations"][0]["rule"] == "2-wake-gate"
    assert doc["gpus"][0]["peak_residual_bytes"] == 29 * GIB
    code, out, _ = _run_cli(capsys, str(log), "--engine", "p1-train", "--until", "10")
    assert code == 0  # the wake (line 11) is after the point asked for
    assert "p1-train  gated" in out and "transitions of p1-train (1)" in out
    code, _, err = _run_cli(capsys, str(log), "--engine", "nobody")
    assert code == 2 and "--engine='nobody'" in err and "p1-infer, p1-train" in err
