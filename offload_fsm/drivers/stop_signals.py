"""SIGINT, SIGTERM and SIGHUP end a run one way: the step in progress is cancelled.

Ctrl-C (SIGINT), what Slurm and Kubernetes send to stop a job (SIGTERM) and a closed terminal
(SIGHUP) all stop a run of ``offload-fsm demo`` or the drivers the same way. While the run
works, :meth:`StopSignals.watch` receives them (anyio's ``open_signal_receiver``, asyncio and
trio alike); the first one cancels the run's work scope. The cancellation reaches each
operation in progress through the task group, and the orchestrator leaves every engine in a
documented state (docs/reliability.md, "Cancellation": a ``gated`` engine goes back to
``slept``, one ``releasing`` or ``waking`` goes to ``failed``). The runner then writes
``run_finished`` with status ``cancelled`` and a reason naming the signal, closes its world
(stand-in processes are killed and reaped) and the command exits ``128 + signal``.

Signals that arrive after the first, while the run is being wound down, are swallowed: the log
is finished and the children reaped before the process goes. Once the run is over the previous
handlers are back (a third Ctrl-C during the report then interrupts as usual).

A signal ignored when the run starts stays ignored: ``nohup`` ignores SIGHUP so that a closed
terminal does not stop the job, and a shell ignores SIGINT in its background jobs.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def signal_name(signum: int) -> str:
    """``15`` -> ``"SIGTERM"``."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by ``signum``: 128 + its number."""
    return 128 + signum


@dataclass
class StopSignals:
    """Which stop signal, if any, cancelled the run's work."""

    received: int | None = None

    @property
    def reason(self) -> str:
        """The ``run_finished`` reason: names the signal."""
        assert self.received is not None
        return f"cancelled by {signal_name(self.received)}"

    @staticmethod
    def watched() -> tuple[signal.Signals, ...]:
        """The stop signals this process does not ignore."""
        return tuple(s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN)

    async def watch(
        self,
        work: anyio.CancelScope,
        *,
        task_status: TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Until cancelled (through the scope it reports as started): the first stop signal
        cancels ``work``; later ones are swallowed while the run winds down."""
        with anyio.CancelScope() as own:
            watched = self.watched()
            if not watched:
                task_status.started(own)
                await anyio.sleep_forever()
            with anyio.open_signal_receiver(*watched) as signals:
                task_status.started(own)
                async for signum in signals:
                    if self.received is None:
                        self.received = int(signum)
                        work.cancel()


__all__ = ["STOP_SIGNALS", "StopSignals", "exit_code", "signal_name"]
