"""The simulated engine's pure parts: footprint, fault plan and memory timeline.

Shared by the in-process :class:`~offload_fsm.sim.engine.SimEngine` and the out-of-process
simulated SGLang server (``sim_server`` + ``sim_proc``). No I/O, no clock of its own: every
method takes ``now``; the memory a process holds is a step function of time, so a release
that "returns before memory drops" is just a step in the future.

The engine's *belief* (which tags it thinks are released) is kept apart from the *memory* (what
the GPU holds), so faults make them disagree the way real engines do.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from offload_fsm.core.errors import ConfigError
from offload_fsm.probe.base import GIB

TAGS = ("weights", "kv_cache", "cuda_graph")  # SGLang's memory tags
CONTEXT_BYTES = int(0.6 * GIB)  # CUDA context floor per process, measured (gpu-facts.md)

# Call names faults can target. The in-process engine's calls are its adapter methods; the
# server's are its endpoints ("release"/"resume" serve SGLang's and vLLM's routes alike).
ENGINE_CALLS = ("prepare_release", "release", "resume", "finish_wake")
SERVER_CALLS = (
    "abort",
    "flush_cache",
    "pause",
    "continue",
    "release",
    "resume",
    "server_info",
    "is_sleeping",
)
FAULT_CALLS = frozenset(ENGINE_CALLS) | frozenset(SERVER_CALLS)


class SimRefused(Exception):
    """The simulated engine refuses a call, as the real one would (e.g. resume of a tag that
    is not released). Internal: SimEngine and the server turn it into EngineError / HTTP 400."""


class FaultKind(str, enum.Enum):
    LATE_RELEASE = "late_release"  # returns ok; memory drops delay_s later
    PARTIAL_RELEASE = "partial_release"  # returns ok; keep_fraction of each tag stays
    NO_RELEASE = "no_release"  # returns ok; memory stays (engine without memory saver)
    NOOP_RESUME = "noop_resume"  # returns ok; memory does not come back
    ERROR = "error"  # fails like an HTTP 500; nothing changes
    HANG = "hang"  # no answer for delay_s (then a client timeout), or never (delay_s None)
    CRASH = "crash"  # the process dies: unreachable from now, memory gone delay_s later
    UNREACHABLE = "unreachable"  # connection refused / dropped; nothing changes
    BUSY = "busy"  # running requests take delay_s to drain after an abort

    def __str__(self) -> str:
        return self.value


_ONLY_ON: dict[FaultKind, frozenset[str]] = {
    FaultKind.LATE_RELEASE: frozenset({"release"}),
    FaultKind.PARTIAL_RELEASE: frozenset({"release"}),
    FaultKind.NO_RELEASE: frozenset({"release"}),
    FaultKind.NOOP_RESUME: frozenset({"resume"}),
    FaultKind.BUSY: frozenset({"prepare_release", "abort"}),
}
_NEEDS_DELAY = frozenset({FaultKind.LATE_RELEASE, FaultKind.BUSY})


def fault_kind(value: object) -> FaultKind:
    """A FaultKind from itself or its string value, or ConfigError naming the value."""
    if isinstance(value, FaultKind):
        return value
    if isinstance(value, str):
        try:
            return FaultKind(value)
        except ValueError:
            pass
    raise ConfigError("fault kind", value, f"one of {[k.value for k in FaultKind]}")


def _seconds(name: str, value: object, *, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, value, "a number of seconds >= 0")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(name, value, "a finite number of seconds >= 0")
    return float(value)


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault. ``delay_s``: LATE_RELEASE when memory drops, BUSY how long the
    drain takes, CRASH when the memory goes (default 0), HANG how long before the caller's
    timeout (None = forever). ``keep_fraction``: PARTIAL_RELEASE's share that stays."""

    kind: FaultKind
    delay_s: float | None = None
    keep_fraction: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", fault_kind(self.kind))
        delay = _seconds("delay_s", self.delay_s, allow_none=self.kind not in _NEEDS_DELAY)
        object.__setattr__(self, "delay_s", delay)
        frac = self.keep_fraction
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
            raise ConfigError("keep_fraction", frac, "a fraction strictly between 0 and 1")

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "delay_s": self.delay_s,
            "keep_fraction": self.keep_fraction,
        }

    @classmethod
    def from_json(cls, obj: object) -> Fault:
        if not isinstance(obj, Mapping) or "kind" not in obj:
            raise ConfigError(
                "fault", obj, "an object with 'kind' (and 'delay_s', 'keep_fraction')"
            )
        extra = set(obj) - {"kind", "delay_s", "keep_fraction"}
        if extra:
            raise ConfigError(
                "fault", obj, f"only 'kind', 'delay_s', 'keep_fraction' (not {sorted(extra)})"
            )
        return cls(fault_kind(obj["kind"]), obj.get("delay_s"), obj.get("keep_fraction", 0.5))


@dataclass(frozen=True, slots=True)
class FaultRule:
    call: str
    fault: Fault
    nth: int | None = None  # 1-based number of the call; None = every call


class FaultPlan:
    """Which fault to inject on which call, by call name and 1-based call number.

    ``FaultPlan().on("release", "late_release", delay_s=0.2, nth=2)`` makes the second
    release return before its memory drops. A rule for a given ``nth`` wins over an
    every-call rule; among equals the last one added wins. Engines count calls themselves;
    the plan can be changed while they run.
    """

    def __init__(self, rules: Iterable[FaultRule] = ()) -> None:
        self._rules: list[FaultRule] = []
        for rule in rules:
            self.add(rule)

    @property
    def rules(self) -> tuple[FaultRule, ...]:
        return tuple(self._rules)

    def add(self, rule: FaultRule) -> FaultPlan:
        if rule.call not in FAULT_CALLS:
            raise ConfigError("fault call", rule.call, f"one of {sorted(FAULT_CALLS)}")
        only = _ONLY_ON.get(rule.fault.kind)
        if only is not None and rule.call not in only:
            raise ConfigError(
                "fault call", rule.call, f"{sorted(only)} for a {rule.fault.kind.value} fault"
            )
        if rule.nth is not None and (
            isinstance(rule.nth, bool) or not isinstance(rule.nth, int) or rule.nth < 1
        ):
            raise ConfigError("nth", rule.nth, "a call number >= 1 or None (every call)")
        self._rules.append(rule)
        return self

    def on(
        self,
        call: str,
        kind: FaultKind | str,
        *,
        nth: int | None = None,
        delay_s: float | None = None,
        keep_fraction: float = 0.5,
    ) -> FaultPlan:
        """Add a rule; returns the plan so calls chain."""
        return self.add(FaultRule(call, Fault(fault_kind(kind), delay_s, keep_fraction), nth))

    def clear(self) -> None:
        self._rules.clear()

    def fault_for(self, call: str, number: int) -> Fault | None:
        best: FaultRule | None = None
        for rule in self._rules:
            if rule.call != call or rule.nth not in (None, number):
                continue
            if best is None or rule.nth is not None or best.nth is None:
                best = rule
        return None if best is None else best.fault

    def to_json(self) -> list[dict[str, Any]]:
        return [{"call": r.call, "nth": r.nth, **r.fault.to_json()} for r in self._rules]

    @classmethod
    def from_json(cls, obj: object) -> FaultPlan:
        """Inverse of :meth:`to_json`: ``[{"call", "kind", "nth"?, "delay_s"?, ...}]``."""
        if not isinstance(obj, list):
            raise ConfigError("faults", obj, "a JSON list of fault rules")
        plan = cls()
        for item in obj:
            if not isinstance(item, dict) or "call" not in item or "kind" not in item:
                raise ConfigError("fault rule", item, "an object with 'call' and 'kind'")
            fault = Fault.from_json({k: v for k, v in item.items() if k not in ("call", "nth")})
            plan.add(FaultRule(str(item["call"]), fault, item.get("nth")))
        return plan


@dataclass(frozen=True, slots=True)
class Footprint:
    """Bytes one simulated engine process holds on EACH of its GPUs: per tag, plus the CUDA
    context that no release frees (it goes only when the process dies)."""

    weights: int
    kv_cache: int
    cuda_graph: int = 0
    context: int = CONTEXT_BYTES

    def __post_init__(self) -> None:
        for name in ("weights", "kv_cache", "cuda_graph", "context"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"footprint.{name}", value, "a whole number of bytes >= 0")

    @classmethod
    def gib(
        cls, weights: float, kv_cache: float, cuda_graph: float = 0.0, context: float = 0.6
    ) -> Footprint:
        return cls(
            int(weights * GIB), int(kv_cache * GIB), int(cuda_graph * GIB), int(context * GIB)
        )

    def tag_bytes(self, tag: str) -> int:
        return int(getattr(self, tag))

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.cuda_graph + self.context

    def to_json(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "kv_cache": self.kv_cache,
            "cuda_graph": self.cuda_graph,
            "context": self.context,
        }

    @classmethod
    def from_json(cls, obj: object) -> Footprint:
        keys = {"weights", "kv_cache", "cuda_graph", "context"}
        if not isinstance(obj, Mapping) or not {"weights", "kv_cache"} <= set(obj) <= keys:
            raise ConfigError(
                "footprint", obj, "{'weights', 'kv_cache', 'cuda_graph'?, 'context'?} in bytes"
            )
        return cls(
            weights=obj["weights"],
            kv_cache=obj["kv_cache"],
            cuda_graph=obj.get("cuda_graph", 0),
            context=obj.get("context", CONTEXT_BYTES),
        )


def _requested(tags: Sequence[str] | None) -> tuple[str, ...]:
    if tags is None:
        return TAGS
    unknown = [t for t in tags if t not in TAGS]
    if unknown:
        raise SimRefused(f"unknown memory tag(s) {unknown}: known tags are {list(TAGS)}")
    return tuple(dict.fromkeys(tags))


class MemoryModel:
    """Memory of one simulated engine process on each of its GPUs, as a step timeline."""

    def __init__(self, footprint: Footprint, now: float, *, require_pause: bool = True) -> None:
        self.footprint = footprint
        self.require_pause = require_pause
        self.released: set[str] = set()  # belief: what the engine thinks it released
        self.paused = False
        self.dead_at: float | None = None
        # tag -> [(from time, bytes)], sorted; value at t = last step with time <= t
        self._steps: dict[str, list[tuple[float, int]]] = {
            tag: [(now, footprint.tag_bytes(tag))] for tag in TAGS
        }
        # (from, until, bytes): bytes_at is constant between two steps, and every probe
        # round asks for it: the span it last answered is kept
        self._span: tuple[float, float, int] | None = None

    def _set(self, tag: str, at: float, nbytes: int, now: float) -> None:
        self._span = None
        steps = self._steps[tag]
        current = [s for s in steps if s[0] <= now][-1:]  # drop history and pending steps
        self._steps[tag] = [*current, (max(at, now), nbytes)]

    def tag_bytes_at(self, tag: str, now: float) -> int:
        value = 0
        for at, nbytes in self._steps[tag]:
            if at > now:
                break
            value = nbytes
        return value

    def bytes_at(self, now: float) -> int:
        """Bytes this process holds on each of its GPUs at ``now``."""
        span = self._span
        if span is not None and span[0] <= now < span[1]:
            return span[2]
        # One pass over each tag's sorted steps: the bytes now, and the span they hold for
        # (from the latest step at or before ``now`` to the earliest after it).
        value = self.footprint.context
        since, until = -math.inf, math.inf
        for steps in self._steps.values():
            held = 0
            for at, nbytes in steps:
                if at > now:
                    until = min(until, at)
                    break
                held = nbytes
                since = max(since, at)
            value += held
        dead_at = self.dead_at
        if dead_at is not None:
            if now >= dead_at:
                value = 0
                since = max(since, dead_at)
            else:
                until = min(until, dead_at)
        self._span = (since, until, value)
        return value

    def next_change_after(self, now: float) -> float | None:
        times = [at for steps in self._steps.values() for at, _ in steps if at > now]
        if self.dead_at is not None and self.dead_at > now:
            times.append(self.dead_at)
        return min(times) if times else None

    def release(
        self,
        tags: Sequence[str] | None,
        now: float,
        fault: Fault | None = None,
        *,
        strict: bool = True,
    ) -> None:
        """Release ``tags`` (None = all). ``strict`` (SGLang): releasing a released tag or
        releasing while generation runs is refused; not strict (vLLM /sleep): skipped."""
        requested = _requested(tags)
        if strict:
            if self.require_pause and not self.paused:
                raise SimRefused(
                    "cannot release memory while generation runs: pause_generation first"
                )
            again = [t for t in requested if t in self.released]
            if again:
                raise SimRefused(f"cannot release {again}: already released")
        todo = [t for t in requested if t not in self.released]
        self.released.update(todo)
        kind = fault.kind if fault is not None else None
        if kind is FaultKind.NO_RELEASE:
            return
        for tag in todo:
            full = self.footprint.tag_bytes(tag)
            if kind is FaultKind.LATE_RELEASE:
                assert fault is not None and fault.delay_s is not None
                self._set(tag, now + fault.delay_s, 0, now)
            elif kind is FaultKind.PARTIAL_RELEASE:
                assert fault is not None
                self._set(tag, now, int(full * fault.keep_fraction), now)
            else:
                self._set(tag, now, 0, now)

    def resume(
        self,
        tags: Sequence[str] | None,
        now: float,
        fault: Fault | None = None,
        *,
        strict: bool = True,
    ) -> None:
        """Resume ``tags`` (None = all). ``strict`` (SGLang): a tag that is not released is
        refused, as torch_memory_saver does; not strict (vLLM /wake_up): skipped."""
        requested = _requested(tags)
        if strict:
            missing = [t for t in requested if t not in self.released]
            if missing:
                raise SimRefused(
                    f"cannot resume {missing}: not released (resume is not idempotent)"
                )
        todo = [t for t in requested if t in self.released]
        self.released.difference_update(todo)
        if fault is not None and fault.kind is FaultKind.NOOP_RESUME:
            return
        for tag in todo:
            self._set(tag, now, self.footprint.tag_bytes(tag), now)

    def die(self, at: float) -> None:
        if self.dead_at is None or at < self.dead_at:
            self.dead_at = at
            self._span = None
