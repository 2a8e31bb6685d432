"""Fault injection by name, in the demo's vocabulary.

``offload-fsm demo`` speaks of late releases (``--late-release-share``), a co-tenant visiting
a shared GPU (``--no-cotenant`` turns it off) and an engine error at a call
(``--fail ENGINE:CALL[:N]``). A test world takes the same faults by name, one at a time and
exactly where the test wants them:

==================  ====================================================================
name                what happens
==================  ====================================================================
``late_release``    the release returns before the memory drops (``delay_s`` later, 1 s)
``stuck_memory``    the release returns but the memory stays: an engine started without
                    its memory saver (the incident in docs/replay.md)
``partial_release`` ``keep_fraction`` of each released tag stays
``noop_resume``     the resume returns but the memory does not come back
``error``           the call fails like an HTTP 500 (``world.fail("E:CALL:N")`` is the
                    demo's ``--fail``)
``hang``            no answer for ``delay_s`` (then a timeout), or never (no ``delay_s``)
``crash``           the engine process dies: unreachable, its memory gone ``delay_s`` later
``unreachable``     connection refused
``busy``            running requests take ``delay_s`` to drain after the abort
``nvml_error``      the ``poll``-th probe round from now fails: ``error`` is an NVML
                    transient (``Timeout``, ``Unknown Error``, ``Insufficient Size``) or
                    ``lost`` / ``reset`` / ``unavailable``
``cotenant``        a foreign process holds ``gib`` on GPU ``gpu`` from ``arrive_s`` to
                    ``leave_s`` (seconds from now; no ``leave_s``: it stays)
==================  ====================================================================

Engine faults take ``engine`` and, where the fault does not imply it, ``call`` (one of
``prepare_release``, ``release``, ``resume``, ``finish_wake``; a watched trainer's offload is
``release`` and its onload ``resume``). ``nth`` counts that engine's calls of ``call`` from the
moment of injection (1 = the next one); without it every such call faults.
"""

from __future__ import annotations

from offload_fsm.core.errors import ConfigError
from offload_fsm.drivers.sim_world import parse_fail
from offload_fsm.settings import gib_to_bytes, parse_positive_gib, parse_positive_int
from offload_fsm.sim.fake_backend import Fault as ProbeFault
from offload_fsm.sim.sim_model import ENGINE_CALLS, FaultKind, FaultPlan
from offload_fsm.testing.trainers import TRAINER_FAULTS
from offload_fsm.testing.world_view import WorldView

# name -> (the simulator's fault kind, the call it implies or None)
ENGINE_FAULTS: dict[str, tuple[FaultKind, str | None]] = {
    "late_release": (FaultKind.LATE_RELEASE, "release"),
    "stuck_memory": (FaultKind.NO_RELEASE, "release"),
    "partial_release": (FaultKind.PARTIAL_RELEASE, "release"),
    "noop_resume": (FaultKind.NOOP_RESUME, "resume"),
    "error": (FaultKind.ERROR, None),
    "hang": (FaultKind.HANG, None),
    "crash": (FaultKind.CRASH, None),
    "unreachable": (FaultKind.UNREACHABLE, None),
    "busy": (FaultKind.BUSY, "prepare_release"),
}
FAULTS: tuple[str, ...] = (*ENGINE_FAULTS, "nvml_error", "cotenant")
NVML_ERRORS = ("Timeout", "Unknown Error", "Insufficient Size", "lost", "reset", "unavailable")
COTENANT_PID = 31337  # the demo's co-tenant pid (drivers/sim_world.py)


def inject(
    world: WorldView,
    fault: str,
    *,
    engine: str | None = None,
    call: str | None = None,
    nth: int | None = None,
    delay_s: float | None = None,
    keep_fraction: float = 0.5,
    gpu: int | None = None,
    gib: float | None = None,
    arrive_s: float = 0.0,
    leave_s: float | None = None,
    poll: int = 1,
    error: str = "Timeout",
) -> None:
    """Inject ``fault`` (a name in :data:`FAULTS`) into ``world``; see the module table."""
    if fault == "nvml_error":
        _nvml(world, poll, error)
    elif fault == "cotenant":
        if gpu is None or gib is None:
            raise ConfigError("cotenant", {"gpu": gpu, "gib": gib}, "both gpu= and gib=")
        world.gpus.cotenant(
            COTENANT_PID,
            world.device(gpu),
            gib_to_bytes(parse_positive_gib("gib", gib)),
            arrive_s=arrive_s,
            leave_s=leave_s,
        )
    elif fault in ENGINE_FAULTS:
        kind, implied = ENGINE_FAULTS[fault]
        if call is None and implied is None:
            raise ConfigError(
                "call", call, f"the call a {fault!r} fault hits: {list(ENGINE_CALLS)}"
            )
        if fault == "late_release" and delay_s is None:
            delay_s = 1.0
        _engine_fault(world, engine, call or implied or "", kind, nth, delay_s, keep_fraction)
    else:
        raise ConfigError("fault", fault, f"one of {list(FAULTS)}")


def fail(world: WorldView, spec: str) -> None:
    """The demo's ``--fail ENGINE:CALL[:N]``: an engine error at that call."""
    engine, call, nth = parse_fail(spec)
    _engine_fault(world, engine, call, FaultKind.ERROR, nth, None, 0.5)


def _engine_fault(
    world: WorldView,
    engine: str | None,
    call: str,
    kind: FaultKind,
    nth: int | None,
    delay_s: float | None,
    keep_fraction: float,
) -> None:
    known = sorted([*world.engines, *world.trainers])
    if engine not in known:
        raise ConfigError("engine", engine, f"an engine of this world, one of {known}")
    if call not in ENGINE_CALLS:
        raise ConfigError("call", call, f"one of {list(ENGINE_CALLS)}")
    plan: FaultPlan
    if engine in world.trainers:
        trainer = world.trainers[engine]
        if kind not in TRAINER_FAULTS or call not in trainer.calls:
            raise ConfigError(
                f"fault on trainer {engine}",
                f"{kind.value} on {call}",
                "error, hang, late_release, stuck_memory or noop_resume on release or resume",
            )
        plan, made = trainer.faults, trainer.calls[call]
    else:
        sim = world.engines[engine]
        plan, made = sim.faults, sim.calls[call]
    at = None if nth is None else made + parse_positive_int("nth", nth)
    plan.on(call, kind, nth=at, delay_s=delay_s, keep_fraction=keep_fraction)


def _nvml(world: WorldView, poll: int, error: str) -> None:
    at = world.probe.rounds + parse_positive_int("poll", poll)
    if error in ("Timeout", "Unknown Error", "Insufficient Size"):
        world.probe.inject(at, ProbeFault.transient(error))
    elif error == "lost":
        world.probe.inject(at, ProbeFault.gpu_lost())
    elif error == "reset":
        world.probe.inject(at, ProbeFault.reset_required())
    elif error == "unavailable":
        world.probe.inject(at, ProbeFault.unavailable())
    else:
        raise ConfigError("error", error, f"one of {list(NVML_ERRORS)}")
