"""Retrying probe rounds: a pure backoff schedule and a wrapper that is itself a backend.

Only :class:`~offload_fsm.core.errors.TransientProbeError` (NVML Timeout / Unknown / Insufficient
Size, and a call that passed its deadline) is retried. A backend that is unavailable or a GPU
that is lost fails at once. Each call runs under a deadline on the injected clock
(:func:`offload_fsm.timing.deadlines.deadline`): a hung driver call is abandoned and the attempt
counts as a :class:`~offload_fsm.core.errors.ProbeTimeout`. Every retry and every give-up is an
event (``probe_retry`` / ``probe_gave_up``) when a recorder is given.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from offload_fsm.core.errors import ConfigError, ProbeError, ProbeTimeout, TransientProbeError
from offload_fsm.core.redact import redact
from offload_fsm.events.bus import Recorder
from offload_fsm.events.kinds import ProbeGaveUp, ProbeRetry
from offload_fsm.probe.base import GpuDevice, ProbeBackend, ProbeRound, rounds_are_cheap
from offload_fsm.timing.clock import Clock, RealClock
from offload_fsm.timing.deadlines import deadline

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry a probe call."""

    attempts: int = 4  # calls in all, the first included
    initial_s: float = 0.005  # the first backoff
    max_s: float = 0.5  # no backoff is longer
    exp_base: float = 2.0
    jitter_s: float = 0.005  # uniform extra in [0, jitter_s)
    call_timeout_s: float = 2.0  # deadline of each call

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError("attempts", self.attempts, "an integer >= 1")
        for name in ("initial_s", "max_s", "jitter_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(name, value, "a finite number of seconds >= 0")
        if not (math.isfinite(self.exp_base) and self.exp_base >= 1):
            raise ConfigError("exp_base", self.exp_base, "a finite number >= 1")
        if not (math.isfinite(self.call_timeout_s) and self.call_timeout_s > 0):
            raise ConfigError("call_timeout_s", self.call_timeout_s, "a finite number > 0")


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): capped exponential plus
    jitter, ``min(max_s, initial_s * exp_base**(attempt-1) + U[0, jitter_s))``. Pure: the
    only randomness is ``rng``."""
    if attempt < 1:
        raise ConfigError("attempt", attempt, "an integer >= 1")
    jitter = rng.uniform(0, policy.jitter_s) if policy.jitter_s else 0.0
    try:
        base = policy.initial_s * policy.exp_base ** (attempt - 1)
    except OverflowError:
        base = math.inf
    return min(policy.max_s, base + jitter)


def backoff_schedule(policy: RetryPolicy, rng: random.Random) -> tuple[float, ...]:
    """The waits between the ``policy.attempts`` calls (one fewer than attempts)."""
    return tuple(backoff_delay(n, policy, rng) for n in range(1, policy.attempts))


class RetryingProbe:
    """A :class:`~offload_fsm.probe.base.ProbeBackend` that retries another one."""

    def __init__(
        self,
        inner: ProbeBackend,
        *,
        policy: RetryPolicy | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.cheap_rounds = rounds_are_cheap(inner)  # retrying does not change what a round costs
        self.policy = policy or RetryPolicy()
        self.clock: Clock = clock or RealClock()
        self.rng = rng or random.Random()
        self.recorder = recorder
        self.retries = 0  # retries made so far (all calls)
        self.gave_up = 0

    async def devices(self) -> tuple[GpuDevice, ...]:
        return await self._call("devices", self.inner.devices, ())

    async def probe(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        keys = tuple(d.key for d in devices)
        return await self._call("probe", lambda: self.inner.probe(devices), keys)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def _call(self, what: str, call: Callable[[], Awaitable[T]], gpus: tuple[str, ...]) -> T:
        policy = self.policy
        for attempt in range(1, policy.attempts + 1):
            error: ProbeError | None = None
            try:
                # Exceptions are caught *inside* the deadline so that they leave it as
                # themselves (a virtual-clock deadline runs a task group).
                async with deadline(self.clock, policy.call_timeout_s):
                    try:
                        return await call()
                    except ProbeError as exc:
                        error = exc
            except TimeoutError:
                error = None
            if error is None:  # the deadline passed
                error = ProbeTimeout(
                    f"{self.name} {what} did not answer within {policy.call_timeout_s:g} s"
                )
            if not isinstance(error, TransientProbeError) or attempt == policy.attempts:
                self.gave_up += 1
                await self._emit_gave_up(error, attempt, gpus)
                raise error
            delay = backoff_delay(attempt, policy, self.rng)
            self.retries += 1
            if self.recorder is not None:
                await self.recorder.emit(
                    ProbeRetry,
                    gpus=gpus,
                    backend=self.name,
                    attempt=attempt,
                    error=redact(str(error)),
                    delay_s=delay,
                )
            await self.clock.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _emit_gave_up(self, error: ProbeError, attempts: int, gpus: tuple[str, ...]) -> None:
        if self.recorder is not None:
            await self.recorder.emit(
                ProbeGaveUp,
                gpus=gpus,
                backend=self.name,
                attempts=attempts,
                error=redact(str(error)),
                error_type=type(error).__name__,
            )
