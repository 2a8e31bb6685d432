"""Every command that writes a file follows one rule (offload_fsm.core.safe_output), and every
failure of a writing command is one line: refusals, a full or a read-only filesystem.

The property test drives each writing command (``trace -o``, ``plot -o``, ``replay
--metrics-out``, and ``demo``'s run log) through every kind of target: a new file, an existing
regular file with and without ``--force``, the command's own input, a symlink, a FIFO, a
directory, a device, a missing parent directory, an empty path, a wrong suffix. It checks the
exit code, the one line naming the path, that what was there is untouched (content, kind,
link target), and that nothing else was created (no temporary file left behind).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offload_fsm.commands import cli
from offload_fsm.core import safe_output
from offload_fsm.events import eventlog
from offload_fsm.events.kinds import RunFinished, RunStarted
from offload_fsm.probe.base import GIB

HAS_PLOT = importlib.util.find_spec("matplotlib") is not None
HAS_METRICS = importlib.util.find_spec("prometheus_client") is not None


def write_log(path: Path) -> None:
    """A small complete log (no GPUs: quick to trace, plot and replay)."""
    run = RunStarted(
        seq=1, ts=1.0, run_id="r", tool_version="0", threshold_bytes=GIB,
        settle_samples=1, fail_open=False, backend="fake",
    )  # fmt: skip
    with eventlog.EventLogWriter(path) as w:
        w.write(run)
        w.write(RunFinished(seq=2, ts=2.0, run_id="r", status="ok"))


@dataclass(frozen=True)
class Writer:
    name: str
    suffix: str  # a suffix it writes
    argv: Callable[[str, str, bool], list[str]]  # (log, output, force) -> argv
    force: bool = True  # has --force
    reads_input: bool = True


WRITERS = [
    Writer("trace", ".json", lambda log, out, f: ["trace", log, "-o", out, *["--force"] * f]),
    *(
        [Writer("plot", ".png", lambda log, out, f: ["plot", log, "-o", out, *["--force"] * f])]
        if HAS_PLOT
        else []
    ),
    *(
        [
            Writer(
                "replay --metrics-out",
                ".prom",
                lambda log, out, f: ["replay", log, "--metrics-out", out, *["--force"] * f],
            )
        ]
        if HAS_METRICS
        else []
    ),
]
CASES = [
    "new",
    "existing",
    "input",
    "symlink",
    "fifo",
    "directory",
    "device",
    "missing parent",
    "empty",
    "wrong suffix",
]


def _snapshot(root: Path) -> dict[str, tuple[str, bytes | str | None]]:
    """Every entry under ``root``: its kind and content (files), target (links)."""
    out: dict[str, tuple[str, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st_.st_mode):
                out[rel] = ("file", p.read_bytes())
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", None)
            else:
                out[rel] = (oct(stat.S_IFMT(st_.st_mode)), None)
    return out


def _make_device(path: Path) -> bool:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # like /dev/null
    except (PermissionError, OSError):
        return False
    return True


def _one_line(err: str) -> None:
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err, err


def _setup(case: str, root: Path, stem: str, suffix: str, log: Path) -> tuple[str, str]:
    """Make the situation; return (log argument, output argument)."""
    target = root / f"{stem}{suffix}"
    if case == "existing":
        target.write_bytes(b"precious")
    elif case == "input":
        shutil.copy(log, target)
        return str(target), str(target)
    elif case == "symlink":
        (root / "elsewhere").mkdir()
        real = root / "elsewhere" / f"real{suffix}"
        real.write_bytes(b"precious")
        target.symlink_to(real)
    elif case == "fifo":
        os.mkfifo(target)
    elif case == "directory":
        target.mkdir()
    elif case == "device":
        if not _make_device(target):
            return str(log), "/dev/null"  # not allowed to make one here: the real one
    elif case == "missing parent":
        return str(log), str(root / "no-such-dir" / f"{stem}{suffix}")
    elif case == "empty":
        return str(log), ""
    elif case == "wrong suffix":
        return str(log), str(root / f"{stem}.bmp")
    return str(log), str(target)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    writer=st.sampled_from(WRITERS),
    case=st.sampled_from(CASES),
    force=st.booleans(),
    stem=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12),
)
def test_every_writing_command_follows_the_safe_output_rule(
    capsys: pytest.CaptureFixture[str], writer: Writer, case: str, force: bool, stem: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "w"
        root.mkdir()
        log = Path(tmp) / "run.jsonl"  # outside root: root holds only what the case made
        write_log(log)
        log_arg, out_arg = _setup(case, root, stem, writer.suffix, log)
        before = _snapshot(root)
        log_before = Path(log_arg).read_bytes()
        code = cli.main(writer.argv(log_arg, out_arg, force))
        err = capsys.readouterr().err
        after = _snapshot(root)
        assert Path(log_arg).read_bytes() == log_before  # the input is never touched
        succeeds = case == "new" or (case == "existing" and force)
        if succeeds:
            assert code == 0, (writer.name, case, err)
            out = Path(out_arg)
            assert out.is_file() and not out.is_symlink()
            assert out.read_bytes() not in (b"", b"precious")
            created = set(after) - set(before)
            assert created <= {out.name}, created  # no temporary file left behind
            for key in set(before) - {out.name}:
                assert after[key] == before[key]
        else:
            assert code == 2, (writer.name, case, force, err)
            _one_line(err)
            assert repr(out_arg) in err, err  # names the path
            assert after == before, (writer.name, case)  # nothing created, nothing changed
            if case == "device" and out_arg == "/dev/null":
                assert Path("/dev/null").is_char_device()


@pytest.mark.parametrize("case", ["existing", "symlink", "fifo", "directory", "device", "empty"])
def test_demo_run_log_follows_the_safe_output_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """The demo's log (``--out DIR --run-id ID`` -> ``DIR/ID.jsonl``) is always a new file:
    anything already there is refused before the run starts, and left as it was."""
    runs = tmp_path / "runs"
    runs.mkdir()
    target = runs / "r1.jsonl"
    argv = ["demo", "--quiet", "--steps", "1", "--out", str(runs), "--run-id", "r1"]
    if case == "existing":
        target.write_bytes(b"an earlier run")
    elif case == "symlink":
        (tmp_path / "real.jsonl").write_bytes(b"elsewhere")
        target.symlink_to(tmp_path / "real.jsonl")
    elif case == "fifo":
        os.mkfifo(target)
    elif case == "directory":
        target.mkdir()
    elif case == "device":
        if not _make_device(target):
            pytest.skip("cannot make a device node here")
    elif case == "empty":
        argv[argv.index(str(runs))] = ""
    before = _snapshot(tmp_path)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # an empty --out must not write into the working directory either
    try:
        code = cli.main(argv)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert code == 2, err
    _one_line(err)
    assert _snapshot(tmp_path) == before


# --- full and read-only filesystems ----------------------------------------------------------


def _failing(code: int, real: Callable[..., int]) -> Callable[..., int]:
    def fail(*args: object) -> int:
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize(("code", "says"), [(errno.ENOSPC, "full"), (errno.EROFS, "read-only")])
@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.name)
@pytest.mark.parametrize("call", ["_write", "_open"])
def test_a_full_or_read_only_filesystem_is_one_line_and_leaves_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    says: str,
    writer: Writer,
    call: str,
) -> None:
    log = tmp_path / "run.jsonl"
    write_log(log)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / f"x{writer.suffix}"
    monkeypatch.setattr(safe_output, call, _failing(code, getattr(safe_output, call)))
    rc = cli.main(writer.argv(str(log), str(out), False))
    err = capsys.readouterr().err
    assert rc == 2, err
    _one_line(err)
    assert str(out) in err and says in err and errno.errorcode[code] in err, err
    assert list(out_dir.iterdir()) == []  # neither the output nor a temporary file


def test_demo_on_a_full_disk_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: exit 1 with a 52-line traceback (an exception group from the task group)."""
    real_write = os.write
    logs: set[int] = set()
    real_create = safe_output.create_new

    def create(name: str, path: object, **kw: object) -> int:
        fd = real_create(name, path)  # type: ignore[arg-type]
        logs.add(fd)
        return fd

    def write(fd: int, data: bytes | memoryview) -> int:
        if fd in logs:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(safe_output, "create_new", create)
    monkeypatch.setattr(eventlog.os, "write", write)
    code = cli.main(["demo", "--quiet", "--steps", "1", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 1, err
    _one_line(err)
    assert "the filesystem is full (ENOSPC)" in err and str(tmp_path / "runs") in err


def test_demo_on_a_read_only_filesystem_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(safe_output, "_open", _failing(errno.EROFS, os.open))
    code = cli.main(["demo", "--quiet", "--steps", "1", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2, err
    _one_line(err)
    assert "read-only (EROFS)" in err and str(tmp_path / "runs") in err


def test_dev_full_is_refused_not_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: ``trace -o /dev/full`` renamed a regular file over the device; ``plot`` wrote
    ``/dev/full.png``. Tried on a private node like /dev/full (char 1:7), so that a
    regression cannot replace the machine's own device."""
    full = tmp_path / "full"
    try:
        os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except OSError:
        pytest.skip("cannot make a device node here")
    log = tmp_path / "run.jsonl"
    write_log(log)
    for writer in WRITERS:
        for force in (False, True):
            assert cli.main(writer.argv(str(log), str(full), force)) == 2
            err = capsys.readouterr().err
            _one_line(err)
            assert "not a device" in err
    assert full.is_char_device()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "run.jsonl"]
