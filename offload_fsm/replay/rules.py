"""The invariants replay checks: ``Rule`` with the text the summary shows, ``Violation`` (one
broken rule, located), and the string-keyed views of the lifecycle table the rules read (log
fields are strings; the views are built once)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from offload_fsm.core.lifecycle import AWAKE_STATES, FINAL_STATES, HOLDING_STATES, TABLE, State
from offload_fsm.replay.display import short_gpu

# String-keyed views of TABLE (log fields are strings): (src, trigger) -> destinations.
LEGAL: dict[tuple[str, str], frozenset[str]] = {
    (src.value, trig.value): frozenset(d.value for d in dsts) for (src, trig), dsts in TABLE.items()
}
STATE_NAMES: frozenset[str] = frozenset(s.value for s in State)
AWAKE: frozenset[str] = frozenset(s.value for s in AWAKE_STATES)
HOLDING: frozenset[str] = frozenset(s.value for s in HOLDING_STATES)
FINAL: frozenset[str] = frozenset(s.value for s in FINAL_STATES)


class Rule(str, enum.Enum):
    REGISTRATION = "0-registration"
    TRANSITION = "1-transition"
    WAKE_GATE = "2-wake-gate"
    GPU_SHARING = "3-gpu-sharing"
    UNFINISHED = "4-unfinished"
    ORDER = "5-order"
    FINAL_STATE = "6-final-state"

    def __str__(self) -> str:
        return self.value


RULE_TEXT: dict[Rule, str] = {
    Rule.REGISTRATION: "engines are registered once, before their events",
    Rule.TRANSITION: "every transition is legal in the table and starts from the replayed state",
    Rule.WAKE_GATE: "no wake without a passing, settled wake gate at or under the threshold "
    "(or a logged fail-open pass)",
    Rule.GPU_SHARING: "engines on the same GPU are never awake together unless they share a group",
    Rule.UNFINISHED: "every releasing ends in slept/failed; every gated in waking/slept/failed",
    Rule.ORDER: "sequence numbers strictly increase, timestamps never go backwards, one run id",
    Rule.FINAL_STATE: "a finished run leaves every engine in a final state",
}


@dataclass(frozen=True, slots=True)
class Violation:
    rule: Rule
    line: int  # 1-based line of the event that broke the rule (the last line for end checks)
    seq: int | None
    engine_id: str | None
    gpus: tuple[str, ...]
    message: str
    ts: float | None = None

    def __str__(self) -> str:
        where = f"line {self.line}" + (f" seq {self.seq}" if self.seq is not None else "")
        who = f" engine {self.engine_id}" if self.engine_id else ""
        gpus = f" gpus {','.join(short_gpu(g) for g in self.gpus)}" if self.gpus else ""
        return f"{where} [{self.rule}]{who}{gpus}: {self.message}"
