"""Offline replay of a run's event log: re-drive every engine's lifecycle, check invariants.

The log is read line by line (binary, streaming, by :func:`eventlog.read_numbered_events` in
its strict mode, the one log reader): memory grows with the number of engines and
GPUs, never with the number of events. Each logged ``transition`` is checked against the
lifecycle ``TABLE`` (through a string-keyed view of it, built once) and against the state
replay reconstructed; gate decisions, fail-open passes and the run header feed the other
invariants. Rules (``Rule``), as docs/replay.md states them:

0. engines are registered once, before their events;
1. every transition is legal in the table and starts from the replayed state;
2. ``gated -> waking`` only after a wake gate decision that opened with every GPU measured at
   or under a limit within the run's threshold, after the settle window (or a logged
   fail-open pass in a run configured fail-open);
3. no two engines that share a GPU are ``waking``/``active`` together unless they are in the
   same share group;
4. a finished run leaves no engine ``releasing`` or ``gated``;
5. sequence numbers strictly increase; timestamps never go backwards; one run id;
6. a finished run leaves every engine in a final state (active, slept, failed), and nothing
   follows ``run_finished``. A log without ``run_finished`` is flagged *truncated* instead.

A structurally unusable log (undecodable line, no ``run_started`` first, a second run) raises
:class:`EventDecodeError` with the line number; a violation is data, not an exception.

Modules: rules.py (``Rule``, ``Violation``, the table views), tracks.py (per-engine and
per-GPU tracks, ``Observer``, ``ReplayResult``), state.py (the replay state, violations, the end
of a run), wake_gate.py (rule 2), replayer.py (``Replayer`` and ``replay_path``), display.py
(GPU names and sizes in messages).
"""

from __future__ import annotations

# ``X as X``: public names kept out of ``__all__`` (as before the split), still re-exported
# for mypy's strict mode.
from offload_fsm.events.eventlog import TruncatedLine
from offload_fsm.replay.display import GIB as GIB
from offload_fsm.replay.display import gib, short_gpu
from offload_fsm.replay.replayer import MAX_LINE_BYTES as MAX_LINE_BYTES
from offload_fsm.replay.replayer import Replayer, replay_path
from offload_fsm.replay.rules import AWAKE as AWAKE
from offload_fsm.replay.rules import FINAL as FINAL
from offload_fsm.replay.rules import HOLDING as HOLDING
from offload_fsm.replay.rules import LEGAL, RULE_TEXT, Rule, Violation
from offload_fsm.replay.rules import STATE_NAMES as STATE_NAMES
from offload_fsm.replay.state import MAX_VIOLATIONS as MAX_VIOLATIONS
from offload_fsm.replay.tracks import EngineTrack, GpuTrack, Observer, ReplayResult

__all__ = [
    "LEGAL",
    "RULE_TEXT",
    "EngineTrack",
    "GpuTrack",
    "Observer",
    "ReplayResult",
    "Replayer",
    "Rule",
    "TruncatedLine",
    "Violation",
    "gib",
    "replay_path",
    "short_gpu",
]
