"""What a finished run prints: where the log is, the replayed summary, the timeline PNG."""

from __future__ import annotations

from typing import TextIO

from offload_fsm.core.errors import OffloadFsmError
from offload_fsm.core.redact import redact
from offload_fsm.drivers.runner import RunOutcome
from offload_fsm.drivers.stop_signals import exit_code, signal_name


def print_report(outcome: RunOutcome, out: TextIO, *, plot: bool = True) -> int:
    """Replay the run's own log (the same checks ``offload-fsm replay`` makes), print the
    summary, draw the timeline where the plot extra is installed. Exit code: 0 when the run
    succeeded and its log replays clean, 128 + the signal's number when a stop signal
    cancelled it (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP), 1 otherwise."""
    from offload_fsm.replay import replay_path
    from offload_fsm.replay.summary import render, summarize

    result = replay_path(outcome.log_path)
    out.write("\n" + render(summarize(result)) + "\n")
    out.write(
        f"\nrun {outcome.run_id}: {outcome.status} in {outcome.wall_s:.2f} s wall "
        f"({outcome.run_s:.1f} s on the run's clock), {outcome.events} events\n"
        f"event log: {outcome.log_path}\n"
    )
    if plot:
        png = outcome.log_path.with_suffix(".png")
        try:
            from offload_fsm.replay.plot import plot_log

            plot_log(outcome.log_path, png)  # never replaces a file (safe_output)
            out.write(f"timeline:  {png}\n")
        except OffloadFsmError as exc:  # no plot extra, a full disk, a file there: say so
            out.write(f"timeline:  not drawn ({exc})\n")
    if outcome.error is not None:
        out.write(redact(f"error: {type(outcome.error).__name__}: {outcome.error}") + "\n")
    if not result.ok:
        out.write(f"replay found {result.violation_count} invariant violation(s)\n")
    if outcome.signal is not None:
        out.write(
            f"stopped by {signal_name(outcome.signal)}: the step in progress was cancelled "
            "(engine states as in docs/reliability.md, Cancellation)\n"
        )
        return exit_code(outcome.signal)
    return 0 if outcome.status == "ok" and result.ok else 1
