"""The JSONL event log: writer (a bus subscriber) and the streaming reader."""

from __future__ import annotations

import gc
import os
import tracemalloc
from pathlib import Path

import anyio
import pytest

from offload_fsm.core.errors import ConfigError, EventDecodeError, EventLogError
from offload_fsm.events import codec, eventlog
from offload_fsm.events.bus import EventBus, Recorder
from offload_fsm.events.eventlog import (
    EventLogWriter,
    ReadReport,
    load_events,
    log_path,
    read_events,
    read_numbered_events,
)
from offload_fsm.events.kinds import Event, MemorySample, PhaseChanged, Transition
from offload_fsm.timing.clock import VirtualClock


def events(n: int) -> list[Event]:
    out: list[Event] = []
    for i in range(1, n + 1):
        if i % 2:
            out.append(
                Transition(
                    seq=i,
                    ts=float(i),
                    run_id="r",
                    engine_id="e0",
                    src="a",
                    dst="b",
                    trigger="t",
                    reason="line\nbreak" if i == 3 else None,
                )
            )
        else:
            out.append(
                MemorySample(
                    seq=i,
                    ts=float(i),
                    run_id="r",
                    gpus=("GPU-0",),
                    backend="fake",
                    used_bytes=i << 20,
                    free_bytes=None,
                    total_bytes=80 << 30,
                )
            )
    return out


def write_lines(path: Path, items: list[Event]) -> bytes:
    data = b"".join(codec.encode(e) + b"\n" for e in items)
    path.write_bytes(data)
    return data


# --- writer -----------------------------------------------------------------------------


def test_writer_appends_one_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with EventLogWriter(path) as log:
        for e in events(5):
            log.write(e)
            # Flushed per event: the file holds it before the next write.
            assert path.read_bytes().endswith(codec.encode(e) + b"\n")
        assert log.written == 5
    assert log.closed
    assert path.read_bytes() == b"".join(codec.encode(e) + b"\n" for e in events(5))
    got, report = load_events(path)
    assert got == events(5)
    assert (report.lines, report.events, report.warnings, report.finished) == (5, 5, [], True)


def test_one_file_per_run_never_reused(tmp_path: Path) -> None:
    with EventLogWriter.for_run(tmp_path / "runs", "run-1") as log:
        log.write(events(1)[0])
    assert log.path == tmp_path / "runs" / "run-1.jsonl"
    before = log.path.read_bytes()
    with pytest.raises(ConfigError, match="does not exist yet"):
        EventLogWriter.for_run(tmp_path / "runs", "run-1")
    assert log.path.read_bytes() == before  # untouched


@pytest.mark.parametrize("run_id", ["", "../escape", "a/b", ".hidden", "sp ace"])
def test_run_id_must_be_a_plain_file_name(tmp_path: Path, run_id: str) -> None:
    with pytest.raises(ConfigError, match="run_id"):
        log_path(tmp_path, run_id)


def test_writer_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no-such-dir"):
        EventLogWriter(tmp_path / "no-such-dir" / "x.jsonl")
    log = EventLogWriter(tmp_path / "x.jsonl")
    log.close()
    log.close()  # idempotent
    with pytest.raises(EventLogError, match="closed"):
        log.write(events(1)[0])


async def test_writer_is_a_bus_subscriber(tmp_path: Path) -> None:
    bus = EventBus()
    rec = Recorder(bus, "r", VirtualClock())
    published: list[Event] = []
    with anyio.fail_after(5), EventLogWriter(tmp_path / "r.jsonl") as log:
        async with anyio.create_task_group() as tg:
            tg.start_soon(log.run, bus.subscribe("eventlog", capacity=2))
            for step in range(20):
                published.append(await rec.emit(PhaseChanged, step=step, phase="rollout"))
            bus.close()
    assert log.written == 20
    assert load_events(log.path)[0] == published


async def test_writer_writes_a_queued_backlog_in_few_system_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes | memoryview) -> int:
        writes.append(bytes(data).count(b"\n"))
        return real_write(fd, data)

    monkeypatch.setattr(eventlog.os, "write", counting_write)
    bus = EventBus()
    sub = bus.subscribe("eventlog", capacity=100)
    for e in events(70):  # queued before the writer runs: one backlog
        await bus.publish(e)
    bus.close()
    with anyio.fail_after(5), EventLogWriter(tmp_path / "r.jsonl") as log:
        await log.run(sub)
    assert load_events(log.path)[0] == events(70)
    assert log.written == sum(writes) == 70
    assert len(writes) == 3  # batches of at most 32 (the subscriber's yield budget)


async def test_writer_with_fsync_writes_every_event(tmp_path: Path) -> None:
    bus = EventBus()
    with anyio.fail_after(10), EventLogWriter(tmp_path / "r.jsonl", fsync=True) as log:
        async with anyio.create_task_group() as tg:
            tg.start_soon(log.run, bus.subscribe("eventlog"))
            for e in events(4):
                await bus.publish(e)
            bus.close()
    assert load_events(log.path)[0] == events(4)


async def test_writer_refuses_a_lossy_subscription(tmp_path: Path) -> None:
    bus = EventBus()
    with (
        EventLogWriter(tmp_path / "r.jsonl") as log,
        bus.subscribe("log", policy="drop") as sub,
        pytest.raises(ConfigError, match="must not lose events"),
    ):
        await log.run(sub)
    bus.close()


# --- reader -----------------------------------------------------------------------------


def test_truncated_final_line_is_a_warning_and_the_rest_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "crash.jsonl"
    whole = write_lines(path, events(4))
    partial = codec.encode(events(5)[4])[:37]  # the writer died mid-line
    path.write_bytes(whole + partial)
    report = ReadReport(str(path))
    got = list(read_events(path, report=report))
    assert got == events(4)
    assert report.truncated is not None
    assert report.warnings == [report.truncated]
    assert report.truncated.line == 5
    assert report.truncated.size == 37
    assert not report.truncated.kept
    assert "line 5" in str(report.truncated)
    assert "dropped" in str(report.truncated)
    assert report.finished


def test_final_line_missing_only_its_newline_is_kept_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "crash.jsonl"
    path.write_bytes(write_lines(path, events(3)).rstrip(b"\n"))
    got, report = load_events(path)
    assert got == events(3)
    assert report.truncated is not None
    assert (report.truncated.line, report.truncated.kept) == (3, True)


def test_every_cut_of_a_file_keeps_exactly_the_whole_lines_before_it(tmp_path: Path) -> None:
    # A crash can stop the writer at any byte: try them all.
    items = events(3)
    data = b"".join(codec.encode(e) + b"\n" for e in items)
    ends = [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]
    path = tmp_path / "cut.jsonl"
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        got, report = load_events(path)
        whole = sum(1 for end in ends if end <= cut)
        only_newline_missing = cut + 1 in ends
        assert got == items[: whole + only_newline_missing], cut
        if cut in ends or cut == 0:
            assert report.truncated is None, cut
        else:
            assert report.truncated is not None, cut
            assert report.truncated.line == whole + 1
            assert report.truncated.kept is only_newline_missing


def test_corrupt_line_in_the_middle_is_an_error_with_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = [codec.encode(e) for e in events(4)]
    path.write_bytes(b"\n".join([good[0], good[1], b'{"kind":"transition", oops', good[3]]) + b"\n")
    got: list[Event] = []
    with pytest.raises(EventDecodeError, match="line 3") as info:
        for event in read_events(path):
            got.append(event)
    assert info.value.line == 3
    assert got == events(2)  # what came before was delivered


def test_corrupt_final_line_with_its_newline_is_an_error_not_a_truncation(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(write_lines(path, events(2)) + b"garbage\n")
    with pytest.raises(EventDecodeError) as info:
        load_events(path)
    assert info.value.line == 3


def test_unknown_field_type_names_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    bad = codec.encode(events(1)[0]).replace(b'"seq":1', b'"seq":"one"')
    path.write_bytes(write_lines(path, events(1)) + bad + b"\n")
    with pytest.raises(EventDecodeError) as info:
        load_events(path)
    assert (info.value.line, info.value.field) == (2, "seq")


@pytest.mark.parametrize("tail", [b"garbage", b"  "], ids=["stray-bytes", "whitespace"])
def test_strict_last_line_forgives_only_an_event_cut_short(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "tail.jsonl"
    whole = write_lines(path, events(2))
    path.write_bytes(whole + tail)
    got, report = load_events(path)  # the default reading warns and keeps the rest
    assert got == events(2) and report.truncated is not None and not report.truncated.kept
    with pytest.raises(EventDecodeError) as info:
        list(read_numbered_events(path, strict_last_line=True))
    assert info.value.line == 3
    path.write_bytes(whole + codec.encode(events(3)[2])[:20])  # a real cut stays a warning
    report = ReadReport(str(path))
    assert len(list(read_numbered_events(path, report=report, strict_last_line=True))) == 2
    assert report.truncated is not None and report.truncated.line == 3


def test_max_line_bytes_rejects_a_longer_line(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    write_lines(path, events(2))
    sizes = [len(codec.encode(e)) for e in events(2)]  # the newline not counted
    assert len(list(read_numbered_events(path, max_line_bytes=max(sizes)))) == 2
    with pytest.raises(EventDecodeError, match="longer than") as info:
        list(read_numbered_events(path, max_line_bytes=max(sizes) - 1))
    assert info.value.line == sizes.index(max(sizes)) + 1


def test_blank_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    a, b = (codec.encode(e) for e in events(2))
    path.write_bytes(b"\n" + a + b"\n  \n\r\n" + b + b"\n")
    report = ReadReport(str(path))
    numbered = list(read_numbered_events(path, report=report))
    assert numbered == [(2, events(2)[0]), (5, events(2)[1])]
    assert (report.lines, report.events, report.blank_lines) == (5, 2, 3)
    assert report.truncated is None


def test_empty_file_has_no_events_and_no_warnings(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    got, report = load_events(path)
    assert (got, report.lines, report.warnings, report.finished) == ([], 0, [], True)


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.jsonl"):
        load_events(tmp_path / "nope.jsonl")


def test_reader_streams_with_flat_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with EventLogWriter(path) as log:
        for i in range(1, 10_001):
            log.write(PhaseChanged(seq=i, ts=float(i), run_id="r", step=i, phase="x" * 100))
    size = path.stat().st_size
    assert size > 2_000_000
    gc.collect()
    tracemalloc.start()
    try:
        count = 0
        for event in read_events(path):
            count += event.seq > 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 10_000
    assert peak < size / 20, (peak, size)  # a few lines' worth, not the file
