"""Process trees from a fake /proc, residuals per GPU, attribution reports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload_fsm.core.errors import ConfigError
from offload_fsm.events import codec
from offload_fsm.events.kinds import AttributionReport
from offload_fsm.probe.attribution import attribute, format_bytes, resident_by_gpu, resident_max
from offload_fsm.probe.base import GIB, MIB, DeviceMemory, ProbeRound, UnplacedProcess
from offload_fsm.probe.processes import ProcessTable, detect_pid_namespace, parse_stat
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from tests.probe.procfs import make_proc

# init(1) -> launcher(100) -> scheduler(101, comm with spaces and parens) -> worker(102)
#         -> zombie(103, child of 100); co-tenant trainer(300)
PROCS = [
    (1, 0, "systemd"),
    (100, 1, "python"),
    (101, 100, "sglang::sched (tp 0) x)"),
    (102, 101, "worker"),
    (103, 100, "defunct", "Z"),
    (300, 1, "trainer"),
    (400, 300, "trainer rank 1"),
]


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    return make_proc(tmp_path / "proc", PROCS)


def test_tree_from_the_spawn_parent(proc_root: Path) -> None:
    table = ProcessTable.snapshot(proc_root)
    assert len(table) == len(PROCS)
    assert table.tree(100) == {100, 101, 102, 103}
    assert table.tree(300) == {300, 400}
    assert table.tree(102) == {102}
    assert table.tree(999) == frozenset()  # root gone
    info = table.get(101)
    assert info is not None
    assert info.comm == "sglang::sched (tp 0) x)"
    assert info.ppid == 100
    assert table.get(103) is not None and table.get(103).state == "Z"  # type: ignore[union-attr]


def test_vanished_and_garbled_processes_are_skipped(proc_root: Path) -> None:
    (proc_root / "500").mkdir()  # vanished between listdir and open: no stat file
    (proc_root / "501").mkdir()
    (proc_root / "501" / "stat").write_text("garbage without parens")
    (proc_root / "502").mkdir()
    (proc_root / "502" / "stat").write_text("502 (x) S notanumber")
    table = ProcessTable.snapshot(proc_root)
    assert 500 not in table and 501 not in table and 502 not in table
    assert table.tree(100) == {100, 101, 102, 103}


def test_missing_proc_root(tmp_path: Path) -> None:
    table = ProcessTable.snapshot(tmp_path / "nope")
    assert not table.available
    assert table.tree(1) == frozenset()
    assert detect_pid_namespace(tmp_path / "nope") == "unknown"


def test_parse_stat_edge_cases() -> None:
    info = parse_stat(7, b"7 (a) b) (c) R 3 7 7 0")
    assert info is not None and (info.comm, info.state, info.ppid) == ("a) b) (c", "R", 3)
    assert parse_stat(7, b"7 (x)") is None
    assert parse_stat(7, b"") is None


@given(st.binary(max_size=80))
def test_parse_stat_never_crashes(data: bytes) -> None:
    info = parse_stat(1, data)
    assert info is None or info.pid == 1


def test_unicode_digit_directories_are_not_pids(proc_root: Path) -> None:
    (proc_root / "¹").mkdir()
    assert len(ProcessTable.snapshot(proc_root)) == len(PROCS)


def test_real_proc_contains_this_process() -> None:
    table = ProcessTable.snapshot()
    assert table.available
    me = os.getpid()
    assert me in table.tree(os.getppid())
    assert me in table.tree(1) or os.getppid() == 0


def test_pid_namespace_detection(tmp_path: Path) -> None:
    host = make_proc(tmp_path / "a", [])
    foreign = make_proc(tmp_path / "b", [], namespace="pid:[4026532999]")
    odd = make_proc(tmp_path / "c", [], namespace="mnt:[1]")
    assert detect_pid_namespace(host) == "host"
    assert detect_pid_namespace(foreign) == "foreign"
    assert detect_pid_namespace(odd) == "unknown"
    assert detect_pid_namespace() in ("host", "foreign")  # this machine


def two_gpu_round() -> tuple[FakeGpus, ProbeRound]:
    gpus = FakeGpus(make_devices(2))
    gpus.set_usage(101, 0, 30 * GIB)  # scheduler rank 0 on gpu0
    gpus.set_usage(102, 1, 20 * GIB)  # worker on gpu1
    gpus.set_usage(102, 0, 1 * GIB)
    gpus.set_usage(400, 0, 5 * GIB)  # trainer co-tenant
    gpus.set_usage(777, 1, 2 * GIB)  # an orphan
    return gpus, gpus.snapshot(gpus.devices)


def test_resident_sums_within_a_gpu_and_maxes_across(proc_root: Path) -> None:
    gpus, rnd = two_gpu_round()
    tree = ProcessTable.snapshot(proc_root).tree(100)
    d0, d1 = gpus.devices
    assert resident_by_gpu(rnd, tree) == {d0.key: 31 * GIB, d1.key: 20 * GIB}
    assert resident_max(rnd, tree) == 31 * GIB  # never 51 GiB
    # a tree absent from a GPU's list is unknown there, never 0
    assert resident_by_gpu(rnd, {400}) == {d0.key: 5 * GIB, d1.key: None}
    assert resident_max(rnd, {400}) is None
    assert resident_max(rnd, frozenset()) is None
    assert resident_by_gpu(rnd, tree, pid_namespace="foreign") == {d0.key: None, d1.key: None}
    with pytest.raises(ConfigError, match="pid_namespace"):
        resident_by_gpu(rnd, tree, pid_namespace="container")


def test_unknown_usage_or_unplaced_processes_make_resident_unknown() -> None:
    gpus, _ = two_gpu_round()
    gpus.hide_usage(102)
    rnd = gpus.snapshot(gpus.devices)
    assert resident_by_gpu(rnd, {101, 102})[gpus.devices[0].key] is None
    legacy = ProbeRound(
        "smi",
        0.0,
        rnd.memory,
        (),
        per_gpu_processes=False,
        unplaced=(UnplacedProcess(101, 30 * GIB),),
    )
    assert resident_by_gpu(legacy, {101}) == {d.key: None for d in gpus.devices}


def test_attribution_report(proc_root: Path) -> None:
    _, rnd = two_gpu_round()
    table = ProcessTable.snapshot(proc_root)
    trees = {"rollout": table.tree(100), "trainer": table.tree(300)}
    report = attribute(rnd, trees, pid_namespace="host", table=table)
    owners = {(g.device.index, p.pid): p.owner for g in report.gpus for p in g.processes}
    assert owners == {
        (0, 101): "rollout",
        (0, 102): "rollout",
        (0, 400): "trainer",
        (1, 102): "rollout",
        (1, 777): "foreign",
    }
    assert report.resident("rollout") == (31 * GIB, 20 * GIB)
    assert report.resident_max("rollout") == 31 * GIB
    assert report.resident("trainer") == (5 * GIB, None)
    assert report.gpus[0].unattributed_bytes == 0  # the fake lists every byte
    names = {p.pid: p.comm for g in report.gpus for p in g.processes}
    assert names[101] == "sglang::sched (tp 0) x)" and names[777] is None

    fields = report.to_event_fields("rollout")
    event = AttributionReport(seq=1, ts=0.0, run_id="r", gpus=report.gpu_keys, **fields)
    assert event.used_bytes == (36 * GIB, 22 * GIB)
    assert event.engine_resident_bytes == (31 * GIB, 20 * GIB)
    assert event.pid_namespace == "host"
    assert len(event.processes) == 5
    assert codec.decode(codec.encode(event)) == event  # the report survives the log
    # two trees and no engine named: whose residual is unknown, not guessed
    assert report.to_event_fields()["engine_resident_bytes"] == (None, None)
    with pytest.raises(ConfigError):
        report.resident("nobody")
    text = report.render()
    assert "rollout" in text and "foreign" in text and "31.00 GiB" in text
    assert "sglang::sched (tp 0) x)" in text


def test_gap_between_device_used_and_listed_processes() -> None:
    gpus, rnd = two_gpu_round()
    d0 = gpus.devices[0]
    mem = DeviceMemory(d0, 80 * GIB, 36 * GIB + 300 * MIB, None, 600 * MIB)
    rnd2 = ProbeRound("nvml", 0.0, (mem,), rnd.processes_on(d0))
    report = attribute(rnd2, {"e": {101}}, pid_namespace="host")
    assert report.gpus[0].unattributed_bytes == 300 * MIB
    assert report.to_event_fields()["engine_resident_bytes"] == (30 * GIB,)
    assert attribute(rnd2, {}, pid_namespace="host").to_event_fields()["engine_resident_bytes"] == (
        None,
    )


def test_foreign_namespace_keeps_whole_device_figures(proc_root: Path) -> None:
    _, rnd = two_gpu_round()
    report = attribute(rnd, {"rollout": {100, 101, 102}}, pid_namespace="foreign")
    assert {p.owner for g in report.gpus for p in g.processes} == {"unknown"}
    assert report.resident("rollout") == (None, None)
    assert report.gpus[0].memory.used_bytes == 36 * GIB
    assert report.gpus[0].unattributed_bytes == 0
    assert any("foreign" in n for n in report.notes)


def test_unreadable_proc_table_makes_owners_unknown(tmp_path: Path) -> None:
    _, rnd = two_gpu_round()
    table = ProcessTable.snapshot(tmp_path / "missing")
    report = attribute(rnd, {"e": table.tree(100)}, pid_namespace="host", table=table)
    assert report.pid_namespace == "unknown"
    assert {p.owner for g in report.gpus for p in g.processes} == {"unknown"}


def test_nested_trees_pick_the_most_specific_owner(proc_root: Path) -> None:
    _, rnd = two_gpu_round()
    table = ProcessTable.snapshot(proc_root)
    report = attribute(
        rnd, {"all": table.tree(1), "rollout": table.tree(100)}, pid_namespace="host"
    )
    owners = {p.pid: p.owner for g in report.gpus for p in g.processes}
    assert owners[101] == "rollout" and owners[400] == "all" and owners[777] == "foreign"


def test_legacy_unplaced_processes_are_reported() -> None:
    _, rnd = two_gpu_round()
    legacy = ProbeRound(
        "smi",
        0.0,
        rnd.memory,
        (),
        per_gpu_processes=False,
        unplaced=(UnplacedProcess(101, 31 * GIB), UnplacedProcess(9, None)),
    )
    report = attribute(legacy, {"e": {101}}, pid_namespace="host")
    assert [(p.pid, p.owner) for p in report.unplaced] == [(101, "e"), (9, "foreign")]
    assert all(not g.processes_known for g in report.gpus)
    assert report.gpus[0].unattributed_bytes is None
    entries = report.to_event_fields()["processes"]
    assert [(e.gpu, e.pid) for e in entries] == [("", 101), ("", 9)]
    assert "legacy" in report.render()
    assert report.to_dict()["unplaced"][0]["pid"] == 101


def test_format_bytes() -> None:
    assert format_bytes(None) == "unknown"
    assert format_bytes(512 * MIB) == "512 MiB"
    assert format_bytes(3 * GIB // 2) == "1.50 GiB"
