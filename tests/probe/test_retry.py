"""Backoff schedule (pure) and the retrying backend, in virtual time."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload_fsm.core.errors import (
    BackendUnavailable,
    ConfigError,
    DeviceUnhealthy,
    ProbeTimeout,
    TransientProbeError,
)
from offload_fsm.events.bus import EventBus, Recorder
from offload_fsm.events.kinds import Event, ProbeGaveUp, ProbeRetry
from offload_fsm.probe.base import GIB, ProbeBackend
from offload_fsm.probe.retry import RetryingProbe, RetryPolicy, backoff_delay, backoff_schedule
from offload_fsm.sim.fake_backend import FakeBackend, Fault
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.timing.clock import VirtualClock


def test_schedule_is_capped_exponential_without_jitter() -> None:
    policy = RetryPolicy(attempts=7, initial_s=0.01, max_s=0.1, exp_base=2.0, jitter_s=0.0)
    assert backoff_schedule(policy, random.Random(0)) == pytest.approx(
        (0.01, 0.02, 0.04, 0.08, 0.1, 0.1)
    )


def test_jitter_comes_only_from_the_injected_rng() -> None:
    policy = RetryPolicy(attempts=5, jitter_s=0.5, max_s=10.0)
    a = backoff_schedule(policy, random.Random(42))
    b = backoff_schedule(policy, random.Random(42))
    c = backoff_schedule(policy, random.Random(43))
    assert a == b
    assert a != c


@given(
    attempt=st.integers(1, 5000),
    initial=st.floats(0, 10),
    cap=st.floats(0, 60),
    base=st.floats(1, 100),
    jitter=st.floats(0, 5),
    seed=st.integers(0, 2**32),
)
def test_delay_is_bounded_and_monotone_in_attempts(
    attempt: int, initial: float, cap: float, base: float, jitter: float, seed: int
) -> None:
    policy = RetryPolicy(initial_s=initial, max_s=cap, exp_base=base, jitter_s=jitter)
    d = backoff_delay(attempt, policy, random.Random(seed))
    assert 0 <= d <= cap
    no_jitter = RetryPolicy(initial_s=initial, max_s=cap, exp_base=base, jitter_s=0)
    rng = random.Random(seed)
    assert backoff_delay(attempt, no_jitter, rng) <= backoff_delay(attempt + 1, no_jitter, rng)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"initial_s": -1.0},
        {"max_s": float("nan")},
        {"exp_base": 0.5},
        {"call_timeout_s": 0.0},
        {"jitter_s": float("inf")},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        backoff_delay(0, RetryPolicy(), random.Random())


class Setup:
    def __init__(self, policy: RetryPolicy) -> None:
        self.clock = VirtualClock()
        self.gpus = FakeGpus(make_devices(2), self.clock)
        self.gpus.set_usage(1, 0, 3 * GIB)
        self.fake = FakeBackend(self.gpus)
        self.bus = EventBus()
        self.sub = self.bus.subscribe("test", capacity=1000)
        self.probe = RetryingProbe(
            self.fake,
            policy=policy,
            clock=self.clock,
            rng=random.Random(7),
            recorder=Recorder(self.bus, "run", self.clock),
        )

    async def events(self) -> list[Event]:
        self.bus.close()
        return [e async for e in self.sub]


POLICY = RetryPolicy(attempts=3, initial_s=0.1, max_s=1.0, jitter_s=0.01, call_timeout_s=1.0)


async def test_transient_errors_are_retried_with_events() -> None:
    s = Setup(POLICY)
    assert isinstance(s.probe, ProbeBackend)
    s.fake.inject(1, Fault.transient())
    s.fake.inject(2, Fault.transient("Insufficient Size"))
    rnd = await s.probe.probe(s.gpus.devices)
    assert rnd.memory[0].used_bytes == 3 * GIB
    events = await s.events()
    assert [type(e) for e in events] == [ProbeRetry, ProbeRetry]
    expected = backoff_schedule(POLICY, random.Random(7))
    retries = [e for e in events if isinstance(e, ProbeRetry)]
    assert [e.delay_s for e in retries] == list(expected)
    assert [e.attempt for e in retries] == [1, 2]
    assert retries[0].gpus == tuple(d.key for d in s.gpus.devices)
    assert "Timeout" in retries[0].error and retries[0].backend == "fake"
    assert s.clock.now() == pytest.approx(sum(expected))  # waited in virtual time


async def test_gives_up_after_the_last_attempt() -> None:
    s = Setup(POLICY)
    for poll in (1, 2, 3):
        s.fake.inject(poll, Fault.transient("Unknown Error"))
    with pytest.raises(TransientProbeError, match="Unknown"):
        await s.probe.probe(s.gpus.devices)
    events = await s.events()
    assert [type(e) for e in events] == [ProbeRetry, ProbeRetry, ProbeGaveUp]
    gave_up = events[-1]
    assert isinstance(gave_up, ProbeGaveUp)
    assert (gave_up.attempts, gave_up.error_type) == (3, "TransientProbeError")
    assert s.probe.gave_up == 1 and s.probe.retries == 2


@pytest.mark.parametrize(
    ("fault", "error"),
    [(Fault.gpu_lost(), DeviceUnhealthy), (Fault.unavailable(), BackendUnavailable)],
)
async def test_non_transient_errors_fail_at_once(fault: Fault, error: type[Exception]) -> None:
    s = Setup(POLICY)
    s.fake.inject(1, fault)
    with pytest.raises(error):
        await s.probe.probe(s.gpus.devices)
    events = await s.events()
    assert [type(e) for e in events] == [ProbeGaveUp]
    assert isinstance(events[0], ProbeGaveUp) and events[0].attempts == 1
    assert s.fake.rounds == 1


async def test_a_hung_call_is_abandoned_at_its_deadline() -> None:
    s = Setup(POLICY)
    s.fake.inject(1, Fault.hang(3600.0))
    rnd = await s.probe.probe(s.gpus.devices)
    assert rnd.memory[0].used_bytes == 3 * GIB
    events = await s.events()
    assert len(events) == 1 and isinstance(events[0], ProbeRetry)
    assert "did not answer within 1 s" in events[0].error
    delay = events[0].delay_s
    assert s.clock.now() == pytest.approx(1.0 + delay)  # not 3600 s
    assert rnd.sampled_at == pytest.approx(1.0 + delay)


async def test_every_attempt_hangs_gives_a_probe_timeout() -> None:
    s = Setup(RetryPolicy(attempts=2, call_timeout_s=0.5, jitter_s=0.0, initial_s=0.1))
    s.fake.inject(1, Fault.hang(10.0))
    s.fake.inject(2, Fault.hang(10.0))
    with pytest.raises(ProbeTimeout):
        await s.probe.probe(s.gpus.devices)
    events = await s.events()
    assert isinstance(events[-1], ProbeGaveUp) and events[-1].error_type == "ProbeTimeout"
    assert s.clock.now() == pytest.approx(1.1)


async def test_devices_and_aclose_pass_through() -> None:
    s = Setup(POLICY)
    assert await s.probe.devices() == s.gpus.devices
    assert s.probe.name == "fake"
    await s.probe.aclose()
    assert s.fake.closed
    assert await s.events() == []


async def test_works_without_a_recorder() -> None:
    clock = VirtualClock()
    gpus = FakeGpus(make_devices(1), clock)
    fake = FakeBackend(gpus, faults={1: Fault.transient()})
    probe = RetryingProbe(fake, policy=POLICY, clock=clock, rng=random.Random(1))
    await probe.probe(gpus.devices)
    assert probe.retries == 1
