"""An in-process simulated engine whose memory lives in a :class:`FakeGpus` ledger.

The engine holds, under its (fake) pid, on each of its GPUs, the bytes of a
:class:`~offload_fsm.sim.sim_model.Footprint` (weights, KV cache, CUDA graphs, plus the
CUDA context that a release never frees). Calls take time on the injected clock; faults from
a :class:`~offload_fsm.sim.sim_model.FaultPlan` make it misbehave on chosen calls. The
memory is registered as a ledger *source*: probes read it as a function of the clock, so a
late release drops memory later with no background task (works with VirtualClock).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anyio

from offload_fsm.core.errors import ConfigError, EngineCallTimeout, EngineError, EngineUnreachable
from offload_fsm.engines._http import check_tags, check_timeout
from offload_fsm.probe.base import GpuDevice
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.sim.sim_model import (
    ENGINE_CALLS,
    TAGS,
    Fault,
    FaultKind,
    FaultPlan,
    Footprint,
    MemoryModel,
    SimRefused,
)
from offload_fsm.timing.clock import Clock

# Measured on an H200 (gpu-facts.md): torch_memory_saver pause ~20 ms, resume ~12 ms.
DEFAULT_LATENCY_S: Mapping[str, float] = {
    "prepare_release": 0.001,
    "release": 0.02,
    "resume": 0.012,
    "finish_wake": 0.001,
}


class SimEngine:
    """A simulated engine in this process, speaking the adapter interface."""

    name = "sim"

    def __init__(
        self,
        engine_id: str,
        gpus: FakeGpus,
        devices: Sequence[int | str | GpuDevice],
        *,
        pid: int,
        footprint: Footprint,
        faults: FaultPlan | None = None,
        latency_s: Mapping[str, float] | None = None,
        require_pause: bool = True,
        clock: Clock | None = None,
        strict: bool = True,
    ) -> None:
        """``clock`` defaults to the ledger's clock (they must agree: memory is a function of
        it). ``latency_s`` overrides :data:`DEFAULT_LATENCY_S` per call. ``require_pause``:
        release before prepare_release is refused, like SGLang releasing under load.
        ``strict`` (SGLang): a second release or a resume of an unreleased tag is refused; not
        strict (vLLM's /sleep and /wake_up): skipped, as the simulated vLLM server does."""
        if not isinstance(engine_id, str) or not engine_id:
            raise ConfigError("engine_id", engine_id, "a non-empty string")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ConfigError("pid", pid, "a positive (fake) pid")
        if not devices:
            raise ConfigError("devices", devices, "at least one GPU")
        self.engine_id = engine_id
        self.gpus = gpus
        self.devices = tuple(gpus.device(d) for d in devices)
        if len({d.key for d in self.devices}) != len(self.devices):
            raise ConfigError("devices", devices, "distinct GPUs")
        self.pid = pid
        self.footprint = footprint
        self.faults = faults if faults is not None else FaultPlan()
        latency = dict(DEFAULT_LATENCY_S)
        for call, seconds in (latency_s or {}).items():
            if call not in ENGINE_CALLS:
                raise ConfigError("latency_s", call, f"one of {list(ENGINE_CALLS)}")
            latency[call] = 0.0 if seconds == 0 else check_timeout(f"latency_s[{call}]", seconds)
        self._latency = latency
        self.clock: Clock = clock or gpus.clock
        self._model = MemoryModel(footprint, self.clock.now(), require_pause=require_pause)
        self._calls: dict[str, int] = dict.fromkeys(ENGINE_CALLS, 0)
        self._strict = strict
        self._crashed = False
        self._closed = False
        gpus.add_process(pid, self.devices, self.resident_bytes)

    # -- what probes and tests see --------------------------------------------------------

    @property
    def process_root(self) -> int | None:
        return self.pid

    def resident_bytes(self) -> int:
        """Bytes held now on each of this engine's GPUs (0 once dead)."""
        return self._model.bytes_at(self.clock.now())

    @property
    def released_tags(self) -> frozenset[str]:
        """What the engine *believes* is released (faults can make memory disagree)."""
        return frozenset(self._model.released)

    @property
    def calls(self) -> dict[str, int]:
        """How many times each call was made (faults are keyed by these numbers)."""
        return dict(self._calls)

    @property
    def crashed(self) -> bool:
        return self._crashed

    def restart(self, *, asleep: bool = True) -> None:
        """The operator restarts the engine process (the repair of a ``failed`` engine): it
        answers again and its memory is fresh: asleep, only the CUDA context and every tag
        released; else its whole footprint. Call counts (which faults key on) go on."""
        now = self.clock.now()
        self._crashed = False
        self._model = MemoryModel(self.footprint, now, require_pause=self._model.require_pause)
        if asleep:
            self._model.paused = True
            self._model.release(None, now)

    def kill(self, after_s: float = 0.0) -> None:
        """The process dies: unreachable now, its memory gone ``after_s`` later (a SIGKILLed
        process's memory shows up free ~130 ms later, once it is reaped)."""
        self._crashed = True
        self._model.die(self.clock.now() + max(0.0, after_s))

    # -- the adapter interface ------------------------------------------------------------

    async def _enter(self, call: str) -> Fault | None:
        """Count the call, apply call-level faults, take the call's time."""
        if self._closed:
            raise EngineError(self.engine_id, call, "adapter is closed")
        if self._crashed:
            raise EngineUnreachable(self.engine_id, call, "engine process is dead (simulated)")
        self._calls[call] += 1
        fault = self.faults.fault_for(call, self._calls[call])
        kind = fault.kind if fault is not None else None
        if kind is FaultKind.UNREACHABLE:
            raise EngineUnreachable(self.engine_id, call, "connection refused (simulated fault)")
        if kind is FaultKind.CRASH:
            assert fault is not None
            self.kill(fault.delay_s or 0.0)
            raise EngineUnreachable(
                self.engine_id, call, "connection dropped: engine process died (simulated crash)"
            )
        if kind is FaultKind.HANG:
            assert fault is not None
            if fault.delay_s is None:
                await anyio.sleep_forever()
            await self.clock.sleep(fault.delay_s or 0.0)
            raise EngineCallTimeout(
                self.engine_id, call, f"no answer within {fault.delay_s:g} s (simulated hang)"
            )
        await self.clock.sleep(self._latency[call])
        if kind is FaultKind.ERROR:
            raise EngineError(
                self.engine_id, call, "HTTP 500: internal server error (simulated fault)"
            )
        return fault

    async def prepare_release(self, drain_timeout_s: float) -> None:
        drain_timeout_s = check_timeout("drain_timeout_s", drain_timeout_s)
        fault = await self._enter("prepare_release")
        if fault is not None and fault.kind is FaultKind.BUSY:
            busy = fault.delay_s or 0.0
            if busy > drain_timeout_s:
                await self.clock.sleep(drain_timeout_s)
                raise EngineCallTimeout(
                    self.engine_id,
                    "prepare_release",
                    f"still busy after {drain_timeout_s:g} s (requests drain in {busy:g} s)",
                )
            await self.clock.sleep(busy)
        self._model.paused = True

    async def release(self, tags: Sequence[str] | None) -> None:
        checked = check_tags(tags, allowed=TAGS)
        fault = await self._enter("release")
        try:
            self._model.release(checked, self.clock.now(), fault, strict=self._strict)
        except SimRefused as exc:
            raise EngineError(self.engine_id, "release", f"HTTP 400: {exc}") from exc

    async def resume(self, tags: Sequence[str] | None) -> None:
        checked = check_tags(tags, allowed=TAGS)
        fault = await self._enter("resume")
        try:
            self._model.resume(checked, self.clock.now(), fault, strict=self._strict)
        except SimRefused as exc:
            raise EngineError(self.engine_id, "resume", f"HTTP 400: {exc}") from exc

    async def finish_wake(self) -> None:
        await self._enter("finish_wake")
        self._model.paused = False

    async def aclose(self) -> None:
        self._closed = True
