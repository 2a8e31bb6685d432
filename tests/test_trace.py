"""Perfetto / Chrome trace export: valid against the trace-event format, and faithful."""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from offload_fsm.commands.cli import main
from offload_fsm.events.kinds import GateDecision, MemorySample, Transition
from offload_fsm.replay.trace import ENGINES_PID, write_trace
from offload_fsm.testing.log_builder import incident_log, write_events
from offload_fsm.testing.synthetic import SimConfig, simulate

PHASES = {"B", "E", "X", "C", "i", "I", "M"}
METADATA = {"process_name", "thread_name", "process_sort_index", "thread_sort_index"}


def validate_trace(doc: Any) -> list[dict[str, Any]]:
    """The JSON Object Format of the Trace Event Format, with what Perfetto's importer needs.

    Returns the events. Checks required fields and types per phase, that every track used
    has a name, and that slices on a thread nest (Perfetto drops slices that overlap).
    """
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    assert doc.get("displayTimeUnit", "ms") in ("ms", "ns")
    events: list[dict[str, Any]] = doc["traceEvents"]
    named_pids: set[int] = set()
    named_threads: set[tuple[int, int]] = set()
    used: set[tuple[int, int]] = set()
    slices: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    open_b: dict[tuple[int, int], list[float]] = defaultdict(list)
    for ev in events:
        ph = ev["ph"]
        assert ph in PHASES, ev
        assert isinstance(ev["name"], str) and ev["name"], ev
        assert type(ev["pid"]) is int and type(ev["tid"]) is int, ev
        track = (ev["pid"], ev["tid"])
        if ph == "M":
            assert ev["name"] in METADATA, ev
            key = "sort_index" if ev["name"].endswith("sort_index") else "name"
            assert key in ev["args"], ev
            if ev["name"] == "process_name":
                named_pids.add(ev["pid"])
            elif ev["name"] == "thread_name":
                named_threads.add(track)
            continue
        assert isinstance(ev["ts"], (int, float)) and ev["ts"] >= 0, ev
        used.add(track)
        if "args" in ev:
            assert isinstance(ev["args"], dict), ev
        if ph == "X":
            assert isinstance(ev["dur"], (int, float)) and ev["dur"] >= 0, ev
            slices[track].append((ev["ts"], ev["ts"] + ev["dur"]))
        elif ph == "B":
            open_b[track].append(ev["ts"])
        elif ph == "E":
            assert open_b[track], f"E without B on {track}"
            start = open_b[track].pop()
            slices[track].append((start, ev["ts"]))
        elif ph == "C":
            assert ev["args"] and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in ev["args"].values()
            ), ev
        elif ph in ("i", "I"):
            assert ev.get("s", "t") in ("g", "p", "t"), ev
    assert not any(open_b.values()), "unclosed B slices"
    for track in used:
        assert track[0] in named_pids, f"process {track[0]} has no name"
    for track, spans in slices.items():
        assert track in named_threads, f"thread {track} has slices but no name"
        stack: list[float] = []
        for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
            while stack and stack[-1] <= start:
                stack.pop()
            assert not stack or end <= stack[-1], f"slices overlap on {track}"
            stack.append(end)
    return events


def _sim_trace(tmp_path: Path, **kw: Any) -> tuple[list[Any], Any, list[dict[str, Any]]]:
    events, _ = simulate(SimConfig(**kw))
    log = write_events(tmp_path / "run.jsonl", events)
    result, _stats = write_trace(log, tmp_path / "run.json")
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["otherData"]["run_id"] == "sim-dual"
    return events, result, validate_trace(doc)


def test_trace_is_valid_and_faithful(tmp_path: Path) -> None:
    events, result, trace = _sim_trace(
        tmp_path, steps=5, seed=3, co_tenant_p=0.6, release_fail_p=0.2, wake_fail_p=0.2
    )
    names = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in trace
        if e["ph"] == "M" and e["name"] == "thread_name"
    }
    by_engine = {name.split(" ")[0]: track for track, name in names.items() if ": " in name}
    assert set(by_engine) == {"p1-train", "p1-infer", "p2-train", "p2-infer"}
    slices = Counter((e["pid"], e["tid"]) for e in trace if e["ph"] == "X")
    for eid, track in by_engine.items():
        moves = sum(1 for e in events if isinstance(e, Transition) and e.engine_id == eid)
        assert slices[track] == moves + 1  # one slice per state held
    # state slices of an engine tile its time without gaps, in the order replay saw
    train = sorted(
        (e for e in trace if e["ph"] == "X" and (e["pid"], e["tid"]) == by_engine["p1-train"]),
        key=lambda e: e["ts"],
    )
    for a, b in itertools.pairwise(train):
        assert a["ts"] + a["dur"] == pytest.approx(b["ts"], abs=1.0)
        assert a["args"]["next"] == b["name"]
    counters = [e for e in trace if e["ph"] == "C" and e["name"] == "used GiB"]
    assert len(counters) == sum(isinstance(e, MemorySample) for e in events)
    assert {e["pid"] for e in counters} == {p for p in {e["pid"] for e in trace} if p >= 100}
    gates = [e for e in trace if e["ph"] == "i" and e["cat"] == "gate" and "gate" in e["name"]]
    assert sum(1 for g in gates if "timed out" not in g["name"]) == sum(
        isinstance(e, GateDecision) for e in events
    )
    assert not [e for e in trace if e.get("cat") == "violation"] and result.ok


def test_incident_violation_is_an_instant_on_the_engine_track(tmp_path: Path) -> None:
    log = incident_log(with_gate_decision=True).write(tmp_path / "incident.jsonl")
    code = main(["trace", str(log), "-o", str(tmp_path / "t.json")])
    assert code == 1
    trace = validate_trace(json.loads((tmp_path / "t.json").read_text()))
    (violation,) = [e for e in trace if e.get("cat") == "violation"]
    assert violation["name"] == "VIOLATION 2-wake-gate" and violation["s"] == "t"
    assert violation["pid"] == ENGINES_PID
    thread = next(
        e["args"]["name"]
        for e in trace
        if e["ph"] == "M" and e["name"] == "thread_name" and e["tid"] == violation["tid"]
    )
    assert thread.startswith("p1-train")
    assert "29.0 GiB > limit 7.0 GiB" in violation["args"]["message"]


def test_unreadable_log_leaves_no_trace_file(tmp_path: Path) -> None:
    log = tmp_path / "bad.jsonl"
    log.write_bytes(b"not json\n")
    assert main(["trace", str(log), "-o", str(tmp_path / "t.json")]) == 2
    assert not (tmp_path / "t.json").exists()
    assert list(tmp_path.iterdir()) == [log]
