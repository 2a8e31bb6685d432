"""The user's own trainer inside a test world: their offload/onload callables, watched.

:class:`WatchedTrainer` hands the user's callables to the library's real
:class:`~offload_fsm.engines.trainer.TrainerAdapter` (so the adapter the orchestrator drives
in production is the one under test) through guards that

- move the trainer's simulated memory on the fake GPUs (its footprint while onloaded, its
  offload residual while offloaded), so the wake gates of other engines see it;
- refuse a second onload without an offload in between, as Megatron does ("Cannot resume
  allocation that is not paused"): a ``double-resume`` finding;
- refuse an onload by anything but the orchestrator's gated wake (the trainer's state is
  then not ``waking``): a ``gate-skipped`` finding, the pipeline called the trainer itself,
  as the code paths that crashed real runs did (and an offload outside the orchestrator's
  release: ``unmanaged-offload``);
- apply engine-call faults injected by name (``error``, ``hang``, ``late_release``,
  ``stuck_memory``, ``noop_resume``) on ``release`` (offload) and ``resume`` (onload).

A refusal raises :class:`~offload_fsm.testing.log.RuleBroken` (an ``AssertionError``) at the
pipeline's culprit line, and the finding stays in the world's log for
``assert_replays_clean``, in case the pipeline swallows the error. The pipeline under test
gets the handle itself (``trainer.onload()``/``trainer.offload()``
are the guarded callables, like an actor handle's ``wake_up``/``sleep``), so a direct call
is seen. User callables may be sync or async; they run inline, in virtual time, never in a
worker thread (a thread would let the virtual clock jump while it runs).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from offload_fsm.core.errors import ConfigError, EngineCallTimeout, EngineError
from offload_fsm.core.lifecycle import State
from offload_fsm.engines.trainer import TrainerAdapter
from offload_fsm.probe.base import GIB, GpuDevice
from offload_fsm.sim.sim_model import Fault, FaultKind, FaultPlan
from offload_fsm.testing.hooks import call_inline
from offload_fsm.testing.log import DOUBLE_RESUME, GATE_SKIPPED, UNMANAGED_OFFLOAD, RuleBroken
from offload_fsm.testing.world_view import WorldView

UserHook = Callable[..., Any]
TRAINER_FAULTS = frozenset(
    {
        FaultKind.ERROR,
        FaultKind.HANG,
        FaultKind.LATE_RELEASE,
        FaultKind.NO_RELEASE,
        FaultKind.NOOP_RESUME,
    }
)


def _tags_arg(fn: Callable[..., Any], tags: Sequence[str] | None) -> tuple[Any, ...]:
    """Pass the tags to callables that take an argument (``sleep()``-style ones take none)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: give it the tags
        return (tags,)
    takes = [p for p in params if p.kind not in (p.KEYWORD_ONLY, p.VAR_KEYWORD)]
    return (tags,) if takes else ()


def _inline(hook: UserHook | None) -> Callable[[], Awaitable[None]] | None:
    """An async wrapper: the adapter awaits it in the event loop (no worker thread)."""
    if hook is None:
        return None
    if not callable(hook):
        raise ConfigError("hook", hook, "a callable (sync or async) or None")

    async def run() -> None:
        await call_inline(hook)

    return run


class WatchedTrainer:
    """One trainer of a test world: the user's callables behind guards (module docstring)."""

    def __init__(
        self,
        world: WorldView,
        engine_id: str,
        devices: tuple[GpuDevice, ...],
        *,
        pid: int,
        offload: UserHook | None,
        onload: UserHook | None,
        awake_bytes: int,
        residual_bytes: int,
        onloaded: bool,
        prepare: UserHook | None = None,
        finish: UserHook | None = None,
    ) -> None:
        for name, fn in (("offload", offload), ("onload", onload)):
            if fn is not None and not callable(fn):
                raise ConfigError(name, fn, "a callable (sync or async) or None")
        if residual_bytes > awake_bytes:
            raise ConfigError(
                "residual_gib", residual_bytes / GIB, f"at most the awake {awake_bytes / GIB} GiB"
            )
        self.world = world
        self.engine_id = engine_id
        self.devices = devices
        self.pid = pid
        self.awake_bytes = awake_bytes
        self.residual_bytes = residual_bytes
        self.faults = FaultPlan()
        self.onloaded = onloaded
        self.calls: dict[str, int] = {"release": 0, "resume": 0}
        self._user_offload = offload
        self._user_onload = onload
        # memory: ``before`` until ``switch_at`` (virtual time), ``after`` from then on
        now = world.clock.now()
        held = awake_bytes if onloaded else residual_bytes
        self._memory = (held, now, held)
        world.gpus.add_process(pid, devices, self.resident_bytes)
        self.adapter = TrainerAdapter(
            engine_id,
            offload=self.offload,
            onload=self.onload,
            process_root=pid,
            prepare=_inline(prepare),
            finish=_inline(finish),
            initially_offloaded=not onloaded,
        )

    def resident_bytes(self) -> int:
        """Bytes this trainer holds now on each of its GPUs."""
        before, switch_at, after = self._memory
        return after if self.world.clock.now() >= switch_at else before

    def _move_memory(self, nbytes: int, after_s: float = 0.0) -> None:
        now = self.world.clock.now()
        self._memory = (self.resident_bytes(), now + after_s, nbytes)

    async def _fault(self, call: str) -> Fault | None:
        self.calls[call] += 1
        fault = self.faults.fault_for(call, self.calls[call])
        if fault is None:
            return None
        if fault.kind is FaultKind.ERROR:
            raise EngineError(self.engine_id, call, "simulated error (injected fault)")
        if fault.kind is FaultKind.HANG:
            if fault.delay_s is None:
                await anyio.sleep_forever()
            await self.world.clock.sleep(fault.delay_s or 0.0)
            raise EngineCallTimeout(
                self.engine_id, call, f"no answer within {fault.delay_s:g} s (simulated hang)"
            )
        return fault

    async def onload(self, tags: Sequence[str] | None = None) -> None:
        """The trainer's wake_up: the user's onload, guarded (module docstring)."""
        fault = await self._fault("resume")
        state = self.world.orchestrator.state(self.engine_id)
        if self.onloaded:
            raise RuleBroken(
                self.world.find(
                    DOUBLE_RESUME,
                    self.engine_id,
                    "onload call",
                    "onload called while the trainer is already onloaded (orchestrator state "
                    f"{state.value}); Megatron fails: Cannot resume allocation that is not paused",
                )
            )
        if state is not State.WAKING:
            self.world.check_truth(self.engine_id, self.devices, "onload call")
            raise RuleBroken(
                self.world.find(
                    GATE_SKIPPED,
                    self.engine_id,
                    "onload call",
                    f"onload called directly while the orchestrator has it {state.value}: "
                    "no wake gate measured its GPUs",
                )
            )
        if self._user_onload is not None:
            await call_inline(self._user_onload, *_tags_arg(self._user_onload, tags))
        self.onloaded = True
        if fault is None or fault.kind is not FaultKind.NOOP_RESUME:
            self._move_memory(self.awake_bytes)

    async def offload(self, tags: Sequence[str] | None = None) -> None:
        """The trainer's sleep: the user's offload, guarded (module docstring)."""
        fault = await self._fault("release")
        state = self.world.orchestrator.state(self.engine_id)
        if not self.onloaded:
            raise EngineError(self.engine_id, "release", "already offloaded (double offload)")
        if state is not State.RELEASING:
            raise RuleBroken(
                self.world.find(
                    UNMANAGED_OFFLOAD,
                    self.engine_id,
                    "offload call",
                    f"offload called directly while the orchestrator has it {state.value}",
                )
            )
        if self._user_offload is not None:
            await call_inline(self._user_offload, *_tags_arg(self._user_offload, tags))
        self.onloaded = False
        if fault is not None and fault.kind is FaultKind.NO_RELEASE:
            return
        late = fault.delay_s if fault is not None and fault.kind is FaultKind.LATE_RELEASE else 0
        self._move_memory(self.residual_bytes, late or 0.0)

    # what sleep()/wake_up() are called on Megatron actors in MILES
    wake_up = onload
    sleep = offload
