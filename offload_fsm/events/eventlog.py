"""The JSONL event log: one file per run, one event per line, written by a bus subscriber.

Writing: :class:`EventLogWriter` creates the run's file (never reuses one: a second run
cannot append to the first run's log), appends ``codec.encode(event) + b"\\n"`` with one
``write`` per event straight to the OS (no user-space buffer, so every event is flushed as
it is written) and, with ``fsync=True``, forces each line to the disk before taking the next.

Reading: :func:`read_events` streams a file line by line in binary (memory stays flat in
the file size). A crash mid-write leaves the last line without its newline: that line is
reported as a :class:`TruncatedLine` in the :class:`ReadReport` (a warning with its line
number, not an error) and everything before it is kept. A bad line anywhere else is an
:class:`~offload_fsm.core.errors.EventDecodeError` with its line number. Blank lines are never
written; a reader skips them and counts them in ``ReadReport.blank_lines`` (they hold no
event, so nothing is lost, and the count keeps them visible).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import anyio.to_thread
import msgspec

from offload_fsm.core import safe_output
from offload_fsm.core.errors import ConfigError, EventDecodeError, EventLogError
from offload_fsm.events import codec
from offload_fsm.events.bus import SlowPolicy, Subscription
from offload_fsm.events.kinds import SCHEMA_VERSION, Event

LOG_SUFFIX = ".jsonl"
_RUN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def log_path(directory: str | os.PathLike[str], run_id: str) -> Path:
    """Where the log of ``run_id`` lives in ``directory``: ``<directory>/<run_id>.jsonl``."""
    if not _RUN_ID.fullmatch(run_id):
        raise ConfigError(
            "run_id", run_id, "letters, digits, '.', '_' or '-', not starting with '.'"
        )
    return Path(directory) / f"{run_id}{LOG_SUFFIX}"


class EventLogWriter:
    """Append-only writer of one run's event log. Use as a context manager.

    ``write(event)`` is synchronous (one ``write`` system call); ``run(subscription)`` is the
    bus subscriber loop. The file is created here and must not exist yet.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.written = 0  # events written so far
        # The safe-output rule (offload_fsm.core.safe_output): created exclusively, never through
        # a symlink or onto anything that is already there.
        self._fd: int | None = safe_output.create_new("event log", self.path)

    @classmethod
    def for_run(
        cls, directory: str | os.PathLike[str], run_id: str, *, fsync: bool = False
    ) -> EventLogWriter:
        """A writer for ``<directory>/<run_id>.jsonl``; creates ``directory`` if needed."""
        path = log_path(directory, run_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                "event log directory", str(path.parent), f"a creatable directory ({exc.strerror})"
            ) from exc
        return cls(path, fsync=fsync)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def write(self, event: Event) -> None:
        """Append one event as one line; flushed to the OS (and the disk if ``fsync``)."""
        self.write_many((event,))

    def write_many(self, events: Sequence[Event]) -> None:
        """Append events as lines, in order, with one write (and one ``fsync``) for all:
        a subscriber that finds a backlog queued writes it in one system call."""
        fd = self._fd
        if fd is None:
            raise EventLogError(f"event log {self.path} is closed")
        data = memoryview(b"".join([codec.encode(event) + b"\n" for event in events]))
        try:
            # One call normally writes it all; loop for the rare short write (signals, quotas).
            while data:
                data = data[os.write(fd, data) :]
            if self.fsync:
                os.fsync(fd)
        except OSError as exc:
            raise EventLogError(
                f"writing event log {self.path} failed: {safe_output.os_reason(exc)}"
            ) from exc
        self.written += len(events)

    async def run(self, subscription: Subscription) -> None:
        """Write every event the subscription receives until the bus closes, what is queued
        together in one write.

        The subscription must use ``SlowPolicy.BLOCK``: an event log must not lose events.
        With ``fsync`` each write runs in a worker thread so the disk wait does not stall
        the event loop (order is kept: one write at a time).
        """
        if subscription.policy is not SlowPolicy.BLOCK:
            raise ConfigError(
                "event log subscription policy",
                subscription.policy.value,
                "block (an event log must not lose events)",
            )
        async for first in subscription:
            batch = [first, *subscription.take_queued()]
            if self.fsync:
                await anyio.to_thread.run_sync(self.write_many, batch)
            else:
                self.write_many(batch)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> EventLogWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventLogWriter({str(self.path)!r}, fsync={self.fsync}, written={self.written})"


@dataclass(frozen=True, slots=True)
class TruncatedLine:
    """Warning: the file's last line has no newline, so the writer was cut off mid-write.

    ``kept`` is True when the partial line still held one whole event (only its newline was
    missing); that event was yielded. Otherwise the line was dropped; ``detail`` says why.
    """

    line: int  # 1-based line number
    size: int  # bytes on that line
    kept: bool
    detail: str

    def __str__(self) -> str:
        fate = "kept (it holds a whole event)" if self.kept else f"dropped ({self.detail})"
        return (
            f"line {self.line}: last line has no newline ({self.size} bytes; the writer was "
            f"cut off mid-write): {fate}"
        )


@dataclass(slots=True)
class ReadReport:
    """What a read found besides events. Filled in while the reader is iterated."""

    path: str
    lines: int = 0  # lines seen, blank ones included
    events: int = 0  # events yielded
    blank_lines: int = 0  # blank lines skipped
    truncated: TruncatedLine | None = None
    finished: bool = False  # the reader reached the end of the file
    warnings: list[TruncatedLine] = field(default_factory=list)


def read_events(
    path: str | os.PathLike[str], *, report: ReadReport | None = None
) -> Iterator[Event]:
    """Stream the events of one log file. See the module docstring for what is reported."""
    for _, event in read_numbered_events(path, report=report):
        yield event


def read_numbered_events(
    path: str | os.PathLike[str],
    *,
    report: ReadReport | None = None,
    max_line_bytes: int | None = None,
    strict_last_line: bool = False,
) -> Iterator[tuple[int, Event]]:
    """Like :func:`read_events` but yields ``(line number, event)`` (1-based).

    The file is opened on the first ``next()``; a missing or unreadable file is a
    :class:`~offload_fsm.core.errors.ConfigError` naming the path. Replay's stricter reading:
    ``max_line_bytes`` makes a longer line (newline not counted) an
    :class:`~offload_fsm.core.errors.EventDecodeError` (it is not an event; nothing that long is
    buffered), and ``strict_last_line`` forgives a last line without its newline only if it
    starts like an event (a write cut short): stray bytes or whitespace there are an error
    like any other bad line.
    """
    rep = report if report is not None else ReadReport(str(path))
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below; open errors mapped here
    except OSError as exc:
        raise ConfigError("event log", str(path), f"a readable event log ({exc.strerror})") from exc
    # A line in the encoder's own layout is decoded here with codec's tables (its kind from
    # the fixed prefix); anything unusual goes through codec.decode, which names the fault.
    decoders, prefix, version = codec.KIND_DECODERS.get, codec.KIND_PREFIX, SCHEMA_VERSION
    n = len(prefix)
    decode = codec.decode
    limit = -1 if max_line_bytes is None else max_line_bytes + 1
    lineno = 0
    with f:
        read = f.readline
        try:
            while raw := read(limit):
                lineno += 1
                rep.lines = lineno
                if raw[-1] != 10:  # no newline: the last line (or one over max_line_bytes)
                    if max_line_bytes is not None and len(raw) > max_line_bytes:
                        raise EventDecodeError(
                            f"line longer than {max_line_bytes} bytes: not an event log",
                            line=lineno,
                        )
                    event = _truncated(raw, lineno, rep, strict_last_line)
                    if event is not None:
                        rep.events += 1
                        yield lineno, event
                    break
                decoder = decoders(raw[n : raw.find(b'"', n)]) if raw[:n] == prefix else None
                if decoder is not None:
                    try:
                        event = decoder.decode(raw)
                    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                        event = None  # codec.decode below says precisely what is wrong
                    if event is not None and event.v == version:
                        rep.events += 1
                        yield lineno, event
                        continue
                if raw.isspace():
                    rep.blank_lines += 1
                    continue
                event = decode(raw, lineno=lineno)
                rep.events += 1
                yield lineno, event
        except OSError as exc:
            raise EventLogError(
                f"reading event log {path} failed near line {lineno}: {exc}"
            ) from exc
    rep.finished = True


def load_events(path: str | os.PathLike[str]) -> tuple[list[Event], ReadReport]:
    """Every event of a log in memory, with the report (for small logs and tests)."""
    report = ReadReport(str(path))
    return list(read_events(path, report=report)), report


def _truncated(raw: bytes, lineno: int, report: ReadReport, strict: bool) -> Event | None:
    event: Event | None = None
    if strict or raw.strip():
        try:
            event = codec.decode(raw, lineno=lineno)
        except EventDecodeError as exc:
            if strict and raw.lstrip()[:1] != b"{":
                raise  # stray bytes, not the start of an event cut short
            detail = str(exc)
        else:
            detail = "only the newline was missing"
    else:
        detail = "only whitespace"
    warning = TruncatedLine(lineno, len(raw), event is not None, detail)
    report.truncated = warning
    report.warnings.append(warning)
    return event
