"""The one rule every command that writes a file follows (trace, plot, metrics, run logs).

- **Refused, always** (exit 2, one line naming the path): an empty path; a path that is a
  symlink, a directory, a device (``/dev/null``, ``/dev/full``, ``/dev/stdout``), a FIFO or a
  socket; the command's own input file (also through another name: a hard link); a parent
  directory that does not exist; a suffix the command cannot write (the suffix decides the
  format: there is no other way to pick it).
- **Refused unless ``--force``**: an existing regular file. ``--force`` never applies to
  anything but a regular file.
- **Atomic**: the output is written to a new temporary file next to the target and renamed
  over it only once complete, so the target is either untouched or whole. A command that
  fails (bad input found while reading the log, a full or read-only filesystem) leaves no
  file behind, and nothing is created before the command's input was validated.
- **OS failures are one line**: ``OSError`` while writing (``ENOSPC``, ``EROFS``, ``EDQUOT``,
  ``EIO``...) becomes :class:`OutputError` naming the path and the reason.

Run logs are never replaced: :func:`create_new` creates them exclusively (``O_EXCL``, which
also refuses a symlink), after :func:`check_output` has refused devices, FIFOs and directories.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, cast

from offload_fsm.core.errors import ConfigError

# The OS calls used to write, as module attributes so that tests can inject failures
# (a full or read-only filesystem) without patching the os module for everyone.
_open = os.open
_write = os.write
_replace = os.replace

_REASONS = {
    errno.ENOSPC: "the filesystem is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EIO: "an I/O error",
    errno.ENOENT: "its directory does not exist",
    errno.ENOTDIR: "a parent is not a directory",
    errno.ENAMETOOLONG: "the name is too long",
}


class OutputError(ConfigError):
    """An output path that is refused, or writing it failed (exit 2; names the path)."""


def os_reason(exc: OSError) -> str:
    """A short reason for an OS error: ``the filesystem is full (ENOSPC)``."""
    code = exc.errno or 0
    name = errno.errorcode.get(code, str(code))
    return f"{_REASONS.get(code, exc.strerror or 'an OS error')} ({name})"


def _kind(mode: int) -> str | None:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def check_output(
    name: str,
    path: str | os.PathLike[str],
    *,
    suffixes: Collection[str],
    inputs: Collection[str | os.PathLike[str]] = (),
    force: bool = False,
    exists_hint: str = "pass --force to replace it",
) -> Path:
    """Refuse ``path`` unless this command may write there; return it as a :class:`Path`.

    ``name`` is the option the user gave (``-o``), ``suffixes`` the accepted ones (lower
    case, with the dot), ``inputs`` the files the command reads. Checks, in order: empty,
    what is already there (symlink, directory, device, FIFO, socket, an input file), the
    suffix, the parent directory, an existing regular file without ``force``.
    """
    text = os.fspath(path)
    accepted = f"a new {' / '.join(sorted(suffixes))} file in an existing directory"
    if not text.strip():
        raise OutputError(name, text, accepted)
    p = Path(text)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(name, text, f"{accepted} ({os_reason(exc)})") from exc
    if st is not None:
        kind = _kind(st.st_mode)
        if kind is not None:
            raise OutputError(name, text, f"{accepted}, not {kind} (never written through)")
        for source in inputs:
            try:
                same = os.path.samefile(source, p)
            except OSError:
                same = False
            if same:
                raise OutputError(
                    name, text, f"{accepted}, not the command's input {os.fspath(source)!r}"
                )
    suffix = "".join(p.suffixes[-1:]).lower()
    if suffix not in suffixes:
        raise OutputError(
            name, text, f"{accepted} (the suffix picks the format; {suffix or 'none'} is not one)"
        )
    parent = p.parent
    if not parent.is_dir():
        raise OutputError(name, text, f"{accepted} ({parent} is not a directory)")
    if st is not None and not force:
        raise OutputError(name, text, f"{accepted}: it exists, {exists_hint}")
    return p


def create_new(name: str, path: str | os.PathLike[str], *, mode: int = 0o644) -> int:
    """Create ``path`` exclusively (never an existing file, never through a symlink) and
    return its descriptor, open for appending. Errors are :class:`OutputError`."""
    text = os.fspath(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
    try:
        return _open(text, flags, mode)
    except FileExistsError as exc:
        raise OutputError(
            name, text, "a file that does not exist yet (one log per run; logs are never reused)"
        ) from exc
    except OSError as exc:
        raise OutputError(
            name, text, f"a path a new file can be created at ({os_reason(exc)})"
        ) from exc


class _Sink:
    """A minimal binary file over a descriptor: every write goes through :data:`_write`."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._buf += data
        if len(self._buf) >= 1 << 20:
            self.flush()
        return len(data)

    def flush(self) -> None:
        view = memoryview(self._buf)
        while view:
            view = view[_write(self._fd, view) :]
        view.release()
        self._buf.clear()


@contextmanager
def atomic_output(name: str, path: Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` (already checked by :func:`check_output`) only
    when the block finishes without an error; on any error nothing is left behind.
    ``OSError`` inside the block or at the rename is raised as :class:`OutputError`."""
    text = os.fspath(path)
    tmp = os.path.join(os.path.dirname(text) or ".", f".{os.path.basename(text)}.{os.getpid()}.tmp")
    fd = -1
    created = False  # only our own temporary file is ever removed
    try:
        fd = _open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        created = True
        sink = _Sink(fd)
        yield cast(BinaryIO, sink)
        sink.flush()
        os.close(fd)
        fd = -1
        st = _lstat_or_none(text)  # moved there meanwhile? never rename over it
        if st is not None and _kind(st.st_mode) is not None:
            raise OutputError(name, text, f"a regular file, not {_kind(st.st_mode)}")
        _replace(tmp, text)
        created = False
    except OSError as exc:
        raise OutputError(name, text, f"a writable path ({os_reason(exc)})") from exc
    finally:
        if fd >= 0:
            os.close(fd)
        if created and os.path.lexists(tmp):
            os.unlink(tmp)


def _lstat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


__all__ = ["OutputError", "atomic_output", "check_output", "create_new", "os_reason"]
