"""The simulated server's memory-holding child process and its ledger files.

Like SGLang's ``sglang::scheduler``, the process that "holds" GPU memory is a spawned child of
the launcher. It writes what it holds, keyed by its REAL pid, to ``<ledger_dir>/<pid>.json``
(atomically: write a dot-file, then rename); :func:`ledger_dir_source` turns such a directory
into a :meth:`FakeGpus.add_source <offload_fsm.sim.fake_gpus.FakeGpus.add_source>` callable, so
probes see memory move and attribution walks the real ``/proc`` from the launcher's pid.

A dead process holds nothing: files of pids that no longer run (or are zombies, or whose pid
was reused: the file records the process's start time) are skipped, as NVML would.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from offload_fsm.core.errors import ConfigError, TransientProbeError
from offload_fsm.sim.sim_model import Fault, Footprint, MemoryModel, SimRefused

LedgerRows = list[tuple[int, str, int]]

_PARENT_CHECK_S = 0.25  # how often an idle child checks that its launcher still lives


def ledger_file(ledger_dir: str | os.PathLike[str], pid: int) -> Path:
    return Path(ledger_dir) / f"{pid}.json"


def write_ledger(
    ledger_dir: str | os.PathLike[str], pid: int, create_time: float, usage: dict[str, int]
) -> None:
    """Atomically record that ``pid`` holds ``usage`` (device key -> bytes)."""
    final = ledger_file(ledger_dir, pid)
    tmp = final.with_name(f".{pid}.json.tmp")
    tmp.write_text(json.dumps({"pid": pid, "create_time": create_time, "usage": usage}))
    os.replace(tmp, final)


def _alive(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 0.05:  # the pid was reused
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def ledger_dir_source(path: str | os.PathLike[str]) -> Callable[[], LedgerRows]:
    """A FakeGpus source reading ``(pid, device key, bytes)`` rows from a ledger directory."""
    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError("ledger_dir", str(path), "an existing directory")

    def read() -> LedgerRows:
        rows: LedgerRows = []
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise TransientProbeError(f"simulated ledger {directory} unreadable: {exc}") from exc
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(".json"):
                continue
            try:
                data = json.loads(Path(entry.path).read_bytes())
            except FileNotFoundError:
                continue  # removed by a clean exit between scandir and read
            except (OSError, ValueError) as exc:
                raise TransientProbeError(f"simulated ledger file {entry.path}: {exc}") from exc
            try:
                pid, create_time, usage = data["pid"], data["create_time"], data["usage"]
                parsed = [(str(k), int(v)) for k, v in usage.items()]
                if not isinstance(pid, int) or not isinstance(create_time, (int, float)):
                    raise TypeError("pid/create_time")
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise TransientProbeError(
                    f"simulated ledger file {entry.path} is malformed: {exc!r}"
                ) from exc
            if not _alive(pid, float(create_time)):
                continue
            rows.extend((pid, key, nbytes) for key, nbytes in parsed if nbytes > 0)
        return rows

    return read


def scheduler_main(conn: Connection, config: dict[str, Any]) -> None:
    """The child: hold memory per the model, obey the launcher, write the ledger.

    Requests are ``(op, *args)`` tuples; replies ``("ok", value)`` or ``("refused", msg)``.
    """
    pid = os.getpid()
    create_time = psutil.Process(pid).create_time()
    ledger_dir = config["ledger_dir"]
    keys: list[str] = list(config["gpus"])
    footprint = Footprint.from_json(config["footprint"])
    require_pause = bool(config["require_pause"])
    parent = os.getppid()
    model = MemoryModel(footprint, time.monotonic(), require_pause=require_pause)
    written: int | None = None

    def sync_ledger() -> None:
        nonlocal written
        nbytes = model.bytes_at(time.monotonic())
        if nbytes != written:
            write_ledger(ledger_dir, pid, create_time, dict.fromkeys(keys, nbytes))
            written = nbytes

    def handle(op: str, args: tuple[Any, ...]) -> object:
        nonlocal model
        now = time.monotonic()
        if op in ("release", "resume"):
            tags, fault_json, strict = args
            fault = Fault.from_json(fault_json) if fault_json is not None else None
            getattr(model, op)(tags, now, fault, strict=strict)
            return None
        if op == "pause":
            model.paused = bool(args[0])
            return None
        if op == "die":
            model.die(now + float(args[0]))
            return None
        if op == "reset":
            model = MemoryModel(footprint, now, require_pause=require_pause)
            return None
        if op == "state":
            return {
                "released": sorted(model.released),
                "paused": model.paused,
                "bytes_per_gpu": model.bytes_at(now),
            }
        raise SimRefused(f"unknown op {op!r}")

    sync_ledger()
    conn.send(("ready", pid))
    try:
        while True:
            now = time.monotonic()
            if model.dead_at is not None and now >= model.dead_at:
                os.kill(os.getpid(), signal.SIGKILL)  # a crash: no cleanup, the ledger stays
            nxt = model.next_change_after(now)
            wait = _PARENT_CHECK_S if nxt is None else min(_PARENT_CHECK_S, max(0.0, nxt - now))
            if conn.poll(wait):
                request = conn.recv()
                op, args = request[0], tuple(request[1:])
                if op == "stop":
                    break
                try:
                    reply: tuple[str, object] = ("ok", handle(op, args))
                except SimRefused as exc:
                    reply = ("refused", str(exc))
                sync_ledger()  # before the reply: the driver frees memory before returning
                conn.send(reply)
            sync_ledger()
            if os.getppid() != parent:  # the launcher died without stopping us
                break
    except (EOFError, OSError, KeyboardInterrupt):
        pass
    ledger_file(ledger_dir, pid).unlink(missing_ok=True)
