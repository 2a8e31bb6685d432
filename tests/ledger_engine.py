"""A tiny engine adapter for orchestrator tests: its memory lives in a FakeGpus ledger."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio.abc

from offload_fsm.core.errors import EngineError
from offload_fsm.probe.base import GIB, GpuDevice
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.timing.clock import Clock

CONTEXT = int(0.6 * GIB)


@dataclass
class LedgerEngine:
    gpus: FakeGpus
    clock: Clock
    pid: int
    devices: Sequence[GpuDevice]
    footprint: int = 40 * GIB
    name: str = "ledger"
    release_keeps: int | None = None  # bytes left after release (None: the CUDA context)
    release_delay_s: float = 0.0  # memory drops this long after release() returned
    resume_noop: bool = False
    fail_on: set[str] = field(default_factory=set)
    fail_after_s: float = 0.0  # a failing call fails this long after it was made
    hang_on: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    tg: anyio.abc.TaskGroup | None = None

    def __post_init__(self) -> None:
        self.hold(self.footprint)

    def hold(self, nbytes: int) -> None:
        for dev in self.devices:
            self.gpus.set_usage(self.pid, dev, nbytes)

    @property
    def process_root(self) -> int | None:
        return self.pid

    async def _enter(self, call: str) -> None:
        self.calls.append(call)
        if call in self.hang_on:
            await self.clock.sleep(1e9)
        if call in self.fail_on:
            if self.fail_after_s:
                await self.clock.sleep(self.fail_after_s)
            raise EngineError(f"pid{self.pid}", call, "HTTP 500: injected")

    async def prepare_release(self, drain_timeout_s: float) -> None:
        await self._enter("prepare_release")

    async def release(self, tags: Sequence[str] | None) -> None:
        await self._enter("release")
        left = CONTEXT if self.release_keeps is None else self.release_keeps
        if self.release_delay_s:
            assert self.tg is not None, "a delayed release needs a task group"

            async def later() -> None:
                await self.clock.sleep(self.release_delay_s)
                self.hold(left)

            self.tg.start_soon(later)
        else:
            self.hold(left)

    async def resume(self, tags: Sequence[str] | None) -> None:
        await self._enter("resume")
        if not self.resume_noop:
            self.hold(self.footprint)

    async def finish_wake(self) -> None:
        await self._enter("finish_wake")

    async def aclose(self) -> None:
        return None
