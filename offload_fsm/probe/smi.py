"""The nvidia-smi backend: the fallback where NVML cannot load, and a cross-check.

A round runs two CSV queries side by side (each ~23 ms: 3,000x an NVML call)::

    nvidia-smi --query-gpu=index,uuid,pci.bus_id,name,memory.total,memory.reserved,
               memory.used,memory.free --format=csv,noheader,nounits
    nvidia-smi --query-compute-apps=gpu_bus_id,pid,used_memory --format=csv,noheader,nounits

Figures are MiB (``memory.used`` has NVML v2 semantics). Where ``memory.reserved`` is not a
valid field it is dropped (reserve unknown); where ``gpu_bus_id`` is not, the legacy
``pid,used_memory`` query is used: usage is summed per pid and the round says it is not
per-GPU. Unreadable rows (blank, garbage, a pid or GPU id that is ``[N/A]``) are skipped and
counted in the round's notes; a usage or memory figure that is ``[N/A]`` or
``[Insufficient Permissions]`` is kept as unknown (None), as NVML reports it. A missing binary
or driver is :class:`BackendUnavailable`; a call that passes its timeout is killed.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio

from offload_fsm.core.errors import (
    BackendUnavailable,
    ConfigError,
    DeviceUnhealthy,
    ProbeError,
    ProbeTimeout,
    TransientProbeError,
)
from offload_fsm.probe.base import (
    MIB,
    DeviceMemory,
    GpuDevice,
    GpuProcess,
    ProbeRound,
    UnplacedProcess,
)
from offload_fsm.probe.devices import canonical_bus_id, is_decimal
from offload_fsm.timing.clock import Clock, RealClock

GPU_FIELDS = (
    "index",
    "uuid",
    "pci.bus_id",
    "name",
    "memory.total",
    "memory.reserved",
    "memory.used",
    "memory.free",
)
APP_FIELDS = ("gpu_bus_id", "pid", "used_memory")
LEGACY_APP_FIELDS = ("pid", "used_memory")
_CSV = "--format=csv,noheader,nounits"
_INVALID_FIELD = "is not a valid field"
_UNAVAILABLE_MARKERS = (
    "couldn't communicate with the nvidia driver",
    "no devices were found",
    "nvml shared library not found",
    "driver/library version mismatch",
    "failed to initialize nvml",
)
_LOST_MARKERS = ("gpu is lost", "requires restart", "reset required")


@dataclass(frozen=True, slots=True)
class SmiGpuRow:
    index: int
    uuid: str
    bus_id: str  # canonical form
    name: str
    total_bytes: int | None
    reserved_bytes: int | None
    used_bytes: int | None
    free_bytes: int | None


@dataclass(frozen=True, slots=True)
class SmiAppRow:
    bus_id: str | None  # None: the legacy query does not say
    pid: int
    used_bytes: int | None


def _mib(text: str) -> int | None:
    """A MiB figure in bytes; None for ``[N/A]``, ``[Insufficient Permissions]``, ..."""
    text = text.strip()
    if text.startswith("["):
        return None
    value = float(text)  # ValueError for garbage: the caller skips the row
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"not a memory figure: {text!r}")
    return int(value * MIB)


def parse_gpu_rows(text: str, fields: Sequence[str] = GPU_FIELDS) -> tuple[list[SmiGpuRow], int]:
    """Rows of ``--query-gpu`` output, and how many rows were skipped as unreadable."""
    rows: list[SmiGpuRow] = []
    skipped = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(fields):
            skipped += 1
            continue
        got = dict(zip(fields, cells, strict=True))
        bus = canonical_bus_id(got["pci.bus_id"])
        uuid = got["uuid"]
        if not is_decimal(got["index"]) or bus is None or not uuid.startswith("GPU-"):
            skipped += 1
            continue
        try:
            figures = {
                k: _mib(got[k]) if k in got else None
                for k in ("memory.total", "memory.reserved", "memory.used", "memory.free")
            }
        except ValueError:
            skipped += 1
            continue
        rows.append(
            SmiGpuRow(
                index=int(got["index"]),
                uuid=uuid,
                bus_id=bus,
                name=got["name"],
                total_bytes=figures["memory.total"],
                reserved_bytes=figures["memory.reserved"],
                used_bytes=figures["memory.used"],
                free_bytes=figures["memory.free"],
            )
        )
    return rows, skipped


def parse_app_rows(text: str, *, legacy: bool = False) -> tuple[list[SmiAppRow], int]:
    """Rows of ``--query-compute-apps`` output (GPU-aware, or the legacy two columns)."""
    width = 2 if legacy else 3
    rows: list[SmiAppRow] = []
    skipped = 0
    for line in text.splitlines():
        if not line.strip() or line.strip().lower().startswith("no running"):
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != width or not is_decimal(cells[-2]):
            skipped += 1
            continue
        bus = None if legacy else canonical_bus_id(cells[0])
        if not legacy and bus is None:
            skipped += 1
            continue
        try:
            used = _mib(cells[-1])
        except ValueError:
            skipped += 1
            continue
        rows.append(SmiAppRow(bus_id=bus, pid=int(cells[-2]), used_bytes=used))
    return rows, skipped


class SmiBackend:
    """Probe backend that runs ``nvidia-smi`` (see the module docstring)."""

    name = "smi"

    def __init__(
        self,
        executable: str = "nvidia-smi",
        *,
        timeout_s: float = 10.0,
        env: Mapping[str, str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ConfigError("timeout_s", timeout_s, "a finite number of seconds > 0")
        self.executable = executable
        self.timeout_s = timeout_s
        self.env = dict(env) if env is not None else None
        self.clock: Clock = clock or RealClock()
        self._gpu_fields: tuple[str, ...] = GPU_FIELDS
        self._legacy_apps = False
        self.calls = 0  # nvidia-smi invocations so far

    def _path(self) -> str:
        search = (self.env or os.environ).get("PATH", os.defpath)
        found = shutil.which(self.executable, path=search)
        if found is None:
            raise BackendUnavailable(f"{self.executable} was not found on PATH")
        return found

    async def _query(self, args: Sequence[str]) -> tuple[int, str, str]:
        argv = [self._path(), *args]
        self.calls += 1
        try:
            with anyio.fail_after(self.timeout_s):
                done = await anyio.run_process(
                    argv, check=False, env=self.env, stdin=subprocess.DEVNULL
                )
        except TimeoutError:
            raise ProbeTimeout(
                f"{self.executable} {args[0]} did not answer within {self.timeout_s:g} s"
            ) from None
        except OSError as exc:  # not executable, vanished between which() and exec
            raise BackendUnavailable(f"{self.executable} cannot be run: {exc}") from exc
        out = done.stdout.decode("utf-8", "replace")
        err = done.stderr.decode("utf-8", "replace")
        return done.returncode, out, err

    def _failure(self, what: str, rc: int, out: str, err: str) -> Exception:
        said = (err.strip() or out.strip()).splitlines()
        tail = said[-1] if said else f"exit status {rc}"
        text = f"{self.executable} {what} failed (exit status {rc}): {tail}"
        low = (err + out).lower()
        if any(m in low for m in _UNAVAILABLE_MARKERS):
            return BackendUnavailable(text)
        if any(m in low for m in _LOST_MARKERS):
            return DeviceUnhealthy(text)
        return TransientProbeError(text)

    async def _gpu_rows(self, notes: list[str]) -> list[SmiGpuRow]:
        while True:
            args = ["--query-gpu=" + ",".join(self._gpu_fields), _CSV]
            rc, out, err = await self._query(args)
            if rc != 0 and _INVALID_FIELD in (err + out) and "memory.reserved" in self._gpu_fields:
                self._gpu_fields = tuple(f for f in self._gpu_fields if f != "memory.reserved")
                continue
            if rc != 0:
                raise self._failure("--query-gpu", rc, out, err)
            rows, skipped = parse_gpu_rows(out, self._gpu_fields)
            if skipped:
                notes.append(f"skipped {skipped} unreadable nvidia-smi GPU row(s)")
            return rows

    async def _app_rows(self, notes: list[str]) -> list[SmiAppRow]:
        while True:
            fields = LEGACY_APP_FIELDS if self._legacy_apps else APP_FIELDS
            rc, out, err = await self._query(["--query-compute-apps=" + ",".join(fields), _CSV])
            if rc != 0 and _INVALID_FIELD in (err + out) and not self._legacy_apps:
                self._legacy_apps = True
                continue
            if rc != 0:
                raise self._failure("--query-compute-apps", rc, out, err)
            rows, skipped = parse_app_rows(out, legacy=self._legacy_apps)
            if skipped:
                notes.append(f"skipped {skipped} unreadable nvidia-smi process row(s)")
            return rows

    async def devices(self) -> tuple[GpuDevice, ...]:
        notes: list[str] = []
        rows = await self._gpu_rows(notes)
        return tuple(
            GpuDevice(r.index, r.uuid, r.bus_id, r.name, r.total_bytes)
            for r in sorted(rows, key=lambda r: r.index)
        )

    async def probe(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        gpu_notes: list[str] = []
        app_notes: list[str] = []
        gpu_rows: list[SmiGpuRow] = []
        app_rows: list[SmiAppRow] = []
        errors: list[ProbeError] = []

        # Both queries at once; errors are kept, not raised, so none leaves as a group.
        async def gpus() -> None:
            try:
                gpu_rows.extend(await self._gpu_rows(gpu_notes))
            except ProbeError as exc:
                errors.append(exc)

        async def apps() -> None:
            try:
                app_rows.extend(await self._app_rows(app_notes))
            except ProbeError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(gpus)
            tg.start_soon(apps)
        if errors:
            raise _most_serious(errors)
        notes = gpu_notes + app_notes
        by_bus = {r.bus_id: r for r in gpu_rows}
        memory = []
        for dev in devices:
            row = by_bus.get(canonical_bus_id(dev.bus_id) or dev.bus_id)
            if row is None or row.uuid != dev.uuid:
                notes.append(f"{dev.label()}: nvidia-smi gave no readable row; memory unknown")
                memory.append(DeviceMemory(dev, None, None, None, None, "smi"))
                continue
            memory.append(
                DeviceMemory(
                    dev, row.total_bytes, row.used_bytes, row.free_bytes, row.reserved_bytes, "smi"
                )
            )
        if self._legacy_apps:
            summed: dict[int, int | None] = {}
            for a in app_rows:
                prev = summed.get(a.pid, 0)
                summed[a.pid] = (
                    None if prev is None or a.used_bytes is None else prev + a.used_bytes
                )
            notes.append("nvidia-smi cannot place processes on GPUs here (legacy query)")
            return ProbeRound(
                backend=self.name,
                sampled_at=self.clock.now(),
                memory=tuple(memory),
                processes=(),
                per_gpu_processes=False,
                notes=tuple(notes),
                unplaced=tuple(UnplacedProcess(pid, b) for pid, b in sorted(summed.items())),
            )
        wanted = {canonical_bus_id(d.bus_id) or d.bus_id: d for d in devices}
        processes = tuple(
            GpuProcess(wanted[a.bus_id], a.pid, a.used_bytes)
            for a in app_rows
            if a.bus_id in wanted
        )
        return ProbeRound(
            backend=self.name,
            sampled_at=self.clock.now(),
            memory=tuple(memory),
            processes=processes,
            notes=tuple(notes),
        )

    async def aclose(self) -> None:
        return None


def _most_serious(errors: Sequence[ProbeError]) -> ProbeError:
    for kind in (BackendUnavailable, DeviceUnhealthy, ProbeTimeout, TransientProbeError):
        for exc in errors:
            if isinstance(exc, kind):
                return exc
    return errors[0]
