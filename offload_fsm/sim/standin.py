"""A stand-in engine or trainer that holds real GPU memory (torch), for the real-GPU demo.

A process tree like SGLang's (a spawn parent, the child holding the memory; see
:mod:`offload_fsm.sim.standin_proc`), pinned to one GPU with ``CUDA_VISIBLE_DEVICES``.
Release frees its tensors (``del`` + ``empty_cache``, or torch_memory_saver ``pause`` where
installed and chosen); resume allocates them again (or ``resume``). Its CUDA context stays
behind, as a real engine's does. The orchestrator finds its memory by walking ``/proc`` from
the parent's pid, exactly as for a real engine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import anyio.to_thread

from offload_fsm.core.errors import EngineError
from offload_fsm.probe.base import GpuDevice
from offload_fsm.sim.standin_proc import StandIn


class StandInEngine:
    """Adapter over one :class:`StandIn` process tree on one GPU."""

    name = "standin"

    def __init__(
        self,
        engine_id: str,
        device: GpuDevice,
        gib: float,
        *,
        tms: bool = False,
        host: bool = False,
        start_released: bool = False,
    ) -> None:
        if gib <= 0:
            raise ValueError(f"{engine_id}: footprint must be > 0 GiB, got {gib}")
        self.engine_id = engine_id
        self.device = device
        self.gib = gib
        self.tms = tms
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=device.uuid)
        self._proc = StandIn(host=host, env=env)
        # torch_memory_saver can only pause what it allocated: allocate once, pause at once
        # when starting released; plain torch frees and allocates again instead.
        if tms:
            self._command(f"tms_alloc {gib}")
            if start_released:
                self._command("pause")
        elif not start_released:
            self._command(f"alloc {gib}")

    @property
    def process_root(self) -> int | None:
        return self._proc.parent_pid

    @property
    def child_pid(self) -> int:
        return self._proc.child_pid

    def _command(self, text: str) -> float:
        try:
            return self._proc.command(text)
        except (RuntimeError, TimeoutError, OSError) as exc:
            raise EngineError(self.engine_id, text.split()[0], str(exc)) from exc

    async def _run(self, text: str) -> None:
        await anyio.to_thread.run_sync(self._command, text)

    async def prepare_release(self, drain_timeout_s: float) -> None:
        return None  # nothing runs on a stand-in

    async def release(self, tags: Sequence[str] | None) -> None:
        await self._run("pause" if self.tms else "free")

    async def resume(self, tags: Sequence[str] | None) -> None:
        await self._run("resume" if self.tms else f"alloc {self.gib}")

    async def finish_wake(self) -> None:
        return None

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._proc.close)
