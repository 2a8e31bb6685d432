"""A deterministic, scripted GPU model: the embedded default and the tests' backend.

:class:`FakeGpus` is the ledger (which pid holds how many bytes on which device, plus a
driver reserve per device); simulated engines move memory in it and probes read it.
:class:`~offload_fsm.sim.fake_backend.FakeBackend` answers probe rounds from it; the
simulated GPUs' identities come from :mod:`offload_fsm.sim.fake_devices`.

Scripted behaviour, all on the ledger's (usually virtual) clock:

- timelines: :meth:`FakeGpus.ramp` / :meth:`FakeGpus.step` / :meth:`FakeGpus.schedule` move a
  pid's usage over time (co-tenants arriving and leaving: :meth:`FakeGpus.cotenant`);
- releases that complete late or slowly: :meth:`FakeGpus.slow_release` turns every later
  decrease of a pid's usage (``set_usage``) into a delayed ramp;
- memory that never comes back: :meth:`FakeGpus.hold` puts a floor under a pid's usage;
- usage read from elsewhere at every snapshot: :meth:`FakeGpus.add_process` (a pid whose
  usage is a function, as simulated engines' memory models are) and
  :meth:`FakeGpus.add_source` (rows, e.g. from ledger files of simulated engine processes);
- None usage (:meth:`FakeGpus.hide_usage`), process lists the driver will not give
  (:meth:`FakeGpus.hide_processes`), host PIDs seen from a container
  (:meth:`FakeGpus.foreign_pids`), heterogeneous models (:meth:`FakeGpus.from_specs`);
- NVML-style errors and hangs at chosen polls: :meth:`FakeBackend.inject` with a
  :class:`Fault`. Errors are the ones the NVML backend raises after mapping.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from offload_fsm.core.errors import DeviceIdError
from offload_fsm.probe.base import DeviceMemory, GpuDevice, GpuProcess, ProbeRound
from offload_fsm.sim.fake_devices import FakeDeviceSpec, make_mixed_devices
from offload_fsm.timing.clock import Clock, RealClock

DeviceRef = int | str | GpuDevice
_NONE: dict[int, int] = {}  # no usage on a device (read only)
_MAX_PLANS = 4096


@dataclass(frozen=True, slots=True)
class _Timeline:
    """Piecewise-linear usage over absolute clock time; constant outside the keyframes."""

    times: tuple[float, ...]
    values: tuple[int, ...]

    def at(self, t: float) -> int:
        i = bisect.bisect_right(self.times, t)
        if i == 0:
            return self.values[0]
        if i == len(self.times):
            return self.values[-1]
        t0, t1 = self.times[i - 1], self.times[i]
        v0, v1 = self.values[i - 1], self.values[i]
        return int(v0 + (v1 - v0) * (t - t0) / (t1 - t0))

    @property
    def end(self) -> float:
        return self.times[-1]


@dataclass(frozen=True, slots=True)
class _SlowRelease:
    delay_s: float
    over_s: float


class FakeGpus:
    """The ledger of a simulated machine's GPU memory."""

    def __init__(
        self,
        devices: Sequence[GpuDevice],
        clock: Clock | None = None,
        *,
        reserved_bytes: int | Mapping[str, int] = 0,
    ) -> None:
        if not devices:
            raise ValueError("a fake machine needs at least one device")
        self.devices = tuple(devices)
        self.keys = frozenset(dev.key for dev in self.devices)
        self._index: dict[int | str, GpuDevice] = {}
        for dev in self.devices:
            for ref in (dev.index, dev.uuid, dev.key):
                self._index.setdefault(ref, dev)
        self.clock: Clock = clock or RealClock()
        self._usage: dict[tuple[int, str], int] = {}  # (pid, device key) -> bytes
        self._timelines: dict[tuple[int, str], _Timeline] = {}
        self._floors: dict[tuple[int, str], int] = {}
        self._slow: dict[int, _SlowRelease] = {}
        self._unknown: set[int] = set()  # pids whose usage the "driver" will not report
        self._hidden_lists: set[str] = set()  # device keys whose process list is unknown
        self._pid_offset = 0
        self._settings = 0  # bumped when what a reading depends on besides its rows changes
        # device key -> (the device, its rows, the settings version, the reading); keyed by
        # the key string: hashing the frozen device dataclass hashes every field on each poll.
        self._views: dict[
            str, tuple[GpuDevice, object, int, DeviceMemory, tuple[GpuProcess, ...]]
        ] = {}
        # Extra usage sources, in the order added: those of any device, and by device key
        # (a snapshot of a few GPUs reads only their sources: at scale, scanning every
        # source of the node was the simulator's largest cost).
        self._sources: list[Callable[[], Iterable[tuple[int, str, int]]]] = []
        self._any_device_sources: list[int] = []
        self._sources_by_key: dict[str, list[int]] = {}
        self._plans: dict[tuple[str, ...], tuple[int, ...]] = {}  # device keys -> sources read
        # Processes whose usage is a function (add_process), by device key: (pid, bytes now).
        self._processes_by_key: dict[str, list[tuple[int, Callable[[], int]]]] = {}
        self._usage_by_key: dict[str, dict[int, int]] = {}  # _usage by device key: pid -> bytes
        if isinstance(reserved_bytes, int):
            self._reserved = {d.key: reserved_bytes for d in self.devices}
        else:
            self._reserved = {self.device(k).key: v for k, v in reserved_bytes.items()}

    @classmethod
    def from_specs(
        cls, specs: Sequence[FakeDeviceSpec], clock: Clock | None = None, node: str | None = None
    ) -> FakeGpus:
        """A machine with one device per spec (models, totals and reserves may differ)."""
        devices = make_mixed_devices(specs, node=node)
        reserved = {d.key: s.reserved_bytes for d, s in zip(devices, specs, strict=True)}
        return cls(devices, clock, reserved_bytes=reserved)

    # --- ledger ------------------------------------------------------------------------

    def add_source(
        self,
        source: Callable[[], Iterable[tuple[int, str, int]]],
        devices: Iterable[DeviceRef] | None = None,
    ) -> None:
        """Extra usage read at every snapshot: ``(pid, device key, bytes)`` rows, e.g. from
        simulated engine processes that keep their ledger in files. ``devices``: the only
        devices its rows name (snapshots of other devices then skip it); None: any."""
        index = len(self._sources)
        self._sources.append(source)
        self._plans.clear()
        if devices is None:
            self._any_device_sources.append(index)
            return
        for key in dict.fromkeys(self.device(d).key for d in devices):
            self._sources_by_key.setdefault(key, []).append(index)

    def add_process(
        self, pid: int, devices: Iterable[DeviceRef], nbytes: Callable[[], int]
    ) -> None:
        """A process holding ``nbytes()`` on each of ``devices``, read at every snapshot of
        them (a simulated engine's memory model). Cheaper than a source: nothing is built
        or filtered per snapshot besides the call."""
        for key in dict.fromkeys(self.device(d).key for d in devices):
            self._processes_by_key.setdefault(key, []).append((pid, nbytes))

    def _settle_timelines(self, now: float) -> None:
        """Fold timelines into the plain ledger (finished ones are dropped)."""
        for entry, line in list(self._timelines.items()):
            value = line.at(now)
            self._store(entry, value)
            if now >= line.end:
                del self._timelines[entry]

    def _store(self, entry: tuple[int, str], nbytes: int) -> None:
        nbytes = max(nbytes, self._floors.get(entry, 0))
        pid, key = entry
        if nbytes == 0:
            self._usage.pop(entry, None)
            on_device = self._usage_by_key.get(key)
            if on_device is not None:
                on_device.pop(pid, None)
        else:
            self._usage[entry] = nbytes
            self._usage_by_key.setdefault(key, {})[pid] = nbytes

    def _entries(self) -> dict[tuple[int, str], int]:
        """Every (pid, device key) -> bytes, sources included."""
        if self._timelines:
            self._settle_timelines(self.clock.now())
        if not self._sources and not self._processes_by_key:
            return self._usage
        merged = dict(self._usage)
        for key, processes in self._processes_by_key.items():
            for pid, nbytes_now in processes:
                nbytes = nbytes_now()
                if nbytes > 0:
                    merged[(pid, key)] = merged.get((pid, key), 0) + nbytes
        for source in self._sources:
            for pid, key, nbytes in source():
                if nbytes > 0:
                    merged[(pid, key)] = merged.get((pid, key), 0) + nbytes
        return merged

    def _rows_by_key(self, keys: tuple[str, ...]) -> dict[str, dict[int, int]]:
        """pid -> bytes on each of ``keys``, reading only the sources that name them (at
        scale, scanning every source of the node, or every row of the ledger, was the
        simulator's largest cost)."""
        if self._timelines:
            self._settle_timelines(self.clock.now())
        usage, processes = self._usage_by_key, self._processes_by_key
        by_key: dict[str, dict[int, int]] = {}
        for key in keys:
            rows = by_key[key] = dict(usage.get(key, _NONE))
            for pid, nbytes_now in processes.get(key, ()):
                nbytes = nbytes_now()
                if nbytes > 0:
                    rows[pid] = rows.get(pid, 0) + nbytes
        if not self._sources:
            return by_key
        plan = self._plans.get(keys)
        if plan is None:
            plan = self._plan(keys)
        sources = self._sources
        for index in plan:
            for pid, key, nbytes in sources[index]():
                on_device = by_key.get(key)
                if on_device is not None and nbytes > 0:
                    on_device[pid] = on_device.get(pid, 0) + nbytes
        return by_key

    def _plan(self, keys: tuple[str, ...]) -> tuple[int, ...]:
        """The sources a snapshot of ``keys`` reads, in the order they were added."""
        picked = set(self._any_device_sources)
        for key in keys:
            picked.update(self._sources_by_key.get(key, ()))
        if len(self._plans) >= _MAX_PLANS:  # device sets are few; never grow without end
            self._plans.clear()
        plan = self._plans[keys] = tuple(sorted(picked))
        return plan

    def device(self, ref: DeviceRef) -> GpuDevice:
        if isinstance(ref, GpuDevice):
            ref = ref.key
        dev = self._index.get(ref)
        if dev is not None:
            return dev
        raise DeviceIdError(f"fake GPU {ref!r} does not exist (have {len(self.devices)})")

    def set_usage(self, pid: int, device: DeviceRef, nbytes: int) -> None:
        """``pid`` now holds ``nbytes`` on ``device`` (0 removes the process there).

        A decrease of a pid under :meth:`slow_release` becomes a delayed ramp instead; a
        pid under :meth:`hold` never drops below its floor.
        """
        dev = self.device(device)
        if nbytes < 0:
            raise ValueError(f"usage cannot be negative: {nbytes}")
        entry = (pid, dev.key)
        slow = self._slow.get(pid)
        current = self.usage(pid, dev)
        if slow is not None and nbytes < current:
            self._ramp_entry(entry, current, nbytes, slow.over_s, slow.delay_s)
            return
        self._timelines.pop(entry, None)
        self._store(entry, nbytes)

    def usage(self, pid: int, device: DeviceRef) -> int:
        entry = (pid, self.device(device).key)
        if self._timelines:
            self._settle_timelines(self.clock.now())
        return self._usage.get(entry, 0)

    def used(self, device: DeviceRef) -> int:
        key = self.device(device).key
        return sum(b for (_, k), b in self._entries().items() if k == key)

    def reserved(self, device: DeviceRef) -> int:
        return self._reserved.get(self.device(device).key, 0)

    # --- scripted timelines --------------------------------------------------------------

    def schedule(self, pid: int, device: DeviceRef, keyframes: Sequence[tuple[float, int]]) -> None:
        """Usage of ``pid`` on ``device`` follows ``(seconds from now, bytes)`` keyframes,
        linearly in between, holding the current usage until the first keyframe and the
        last keyframe's bytes after it. Two keyframes at one time make a step."""
        dev = self.device(device)
        if not keyframes:
            raise ValueError("a schedule needs at least one keyframe")
        now = self.clock.now()
        times = [now + keyframes[0][0]]
        values = [self.usage(pid, dev)]  # held until the first keyframe
        for offset, nbytes in keyframes:
            if offset < 0 or nbytes < 0:
                raise ValueError(f"keyframe ({offset}, {nbytes}) must not be negative")
            if now + offset < times[-1]:
                raise ValueError("keyframes must be in time order")
            times.append(now + offset)
            values.append(nbytes)
        self._set_timeline((pid, dev.key), times, values)

    def ramp(
        self, pid: int, device: DeviceRef, nbytes: int, over_s: float, *, after_s: float = 0.0
    ) -> None:
        """Hold the current usage for ``after_s``, then move linearly to ``nbytes`` over
        ``over_s`` (a slow release, or a slow allocation)."""
        dev = self.device(device)
        self._ramp_entry((pid, dev.key), self.usage(pid, dev), nbytes, over_s, after_s)

    def step(self, pid: int, device: DeviceRef, nbytes: int, *, after_s: float) -> None:
        """Usage jumps to ``nbytes`` after ``after_s`` (a release that completes late)."""
        self.ramp(pid, device, nbytes, 0.0, after_s=after_s)

    def cotenant(
        self,
        pid: int,
        device: DeviceRef,
        nbytes: int,
        *,
        arrive_s: float = 0.0,
        leave_s: float | None = None,
    ) -> None:
        """A foreign process that appears after ``arrive_s`` (and leaves after ``leave_s``)."""
        frames = [(arrive_s, 0), (arrive_s, nbytes)]
        if leave_s is not None:
            if leave_s < arrive_s:
                raise ValueError(f"co-tenant leaves ({leave_s}) before it arrives ({arrive_s})")
            frames += [(leave_s, nbytes), (leave_s, 0)]
        self.schedule(pid, device, frames)

    def _ramp_entry(
        self, entry: tuple[int, str], start: int, nbytes: int, over_s: float, after_s: float
    ) -> None:
        if nbytes < 0 or over_s < 0 or after_s < 0:
            raise ValueError(f"ramp to {nbytes} over {over_s} s after {after_s} s is invalid")
        t0 = self.clock.now() + after_s
        self._set_timeline(entry, [t0, t0 + over_s], [start, nbytes])

    def _set_timeline(self, entry: tuple[int, str], times: list[float], values: list[int]) -> None:
        # Equal times make a step: ``_Timeline.at`` takes the last value at a repeated time.
        self._timelines[entry] = _Timeline(tuple(times), tuple(values))
        self._settle_timelines(self.clock.now())

    def slow_release(self, pid: int, *, delay_s: float = 0.0, over_s: float = 0.0) -> None:
        """From now on, every decrease of ``pid``'s usage (``set_usage``) starts ``delay_s``
        late and takes ``over_s``: a release call that returns before the driver frees."""
        if delay_s < 0 or over_s < 0:
            raise ValueError(f"slow release needs non-negative times, got {delay_s}, {over_s}")
        self._slow[pid] = _SlowRelease(delay_s, over_s)

    def hold(self, pid: int, device: DeviceRef, nbytes: int | None = None) -> None:
        """``pid``'s usage on ``device`` never drops below ``nbytes`` (default: what it holds
        now): memory that never comes back, e.g. an engine started without a memory saver."""
        dev = self.device(device)
        floor = self.usage(pid, dev) if nbytes is None else nbytes
        if floor < 0:
            raise ValueError(f"a floor cannot be negative: {floor}")
        self._floors[(pid, dev.key)] = floor
        self._store((pid, dev.key), self._usage.get((pid, dev.key), 0))

    # --- what the "driver" will not say ------------------------------------------------------

    def hide_usage(self, pid: int, hidden: bool = True) -> None:
        """Report ``pid``'s per-process usage as unknown (None), as some drivers do."""
        (self._unknown.add if hidden else self._unknown.discard)(pid)
        self._settings += 1

    def hide_processes(self, device: DeviceRef, hidden: bool = True) -> None:
        """The process list of ``device`` cannot be read (NotSupported / NoPermission)."""
        key = self.device(device).key
        (self._hidden_lists.add if hidden else self._hidden_lists.discard)(key)
        self._settings += 1

    def foreign_pids(self, offset: int) -> None:
        """Report every pid as ``pid + offset``: host PIDs seen from a container's own PID
        namespace (0 turns it off). Pair it with ``pid_namespace="foreign"``."""
        if offset < 0:
            raise ValueError(f"a pid offset cannot be negative: {offset}")
        self._pid_offset = offset
        self._settings += 1

    @property
    def pid_namespace(self) -> str:
        """What :func:`offload_fsm.probe.attribution.detect_pid_namespace` would say."""
        return "foreign" if self._pid_offset else "host"

    # --- reading -----------------------------------------------------------------------------

    def snapshot(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        keys = tuple([d.key for d in devices])
        by_key = self._rows_by_key(keys)
        memory: list[DeviceMemory] = []
        processes: list[GpuProcess] = []
        for dev in devices:
            mem, procs = self._device_view(dev, tuple(sorted(by_key[dev.key].items())))
            memory.append(mem)
            processes.extend(procs)
        hidden = self._hidden_lists
        unknown = tuple(key for key in keys if key in hidden) if hidden else ()
        return ProbeRound(
            "fake",
            self.clock.now(),
            tuple(memory),
            tuple(processes),
            unknown_processes=unknown,
        )

    def _device_view(
        self, dev: GpuDevice, rows: tuple[tuple[int, int], ...]
    ) -> tuple[DeviceMemory, tuple[GpuProcess, ...]]:
        """One device's reading, reused while nothing about it changed: most polls see the
        same memory, and building the records again was most of a simulated round."""
        cached = self._views.get(dev.key)
        if (
            cached is not None
            and cached[0] is dev
            and cached[1] == rows
            and cached[2] == self._settings
        ):
            return cached[3], cached[4]
        hidden = dev.key in self._hidden_lists
        reserved = self._reserved.get(dev.key, 0)
        used = sum(nbytes for _, nbytes in rows)
        total = dev.total_bytes
        mem = DeviceMemory(
            device=dev,
            total_bytes=total,
            used_bytes=used,
            free_bytes=None if total is None else max(0, total - reserved - used),
            reserved_bytes=reserved,
        )
        procs = (
            ()
            if hidden
            else tuple(
                GpuProcess(
                    device=dev,
                    pid=pid + self._pid_offset,
                    used_bytes=None if pid in self._unknown else nbytes,
                )
                for pid, nbytes in rows
            )
        )
        self._views[dev.key] = (dev, rows, self._settings, mem, procs)
        return mem, procs
