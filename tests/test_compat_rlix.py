"""offload_fsm.compat.rlix as a drop-in for rlops/rlix (refs/pull/11/head, f73bfafb0671):
``parse_env_positive_float`` (every case of upstream ``tests/test_env_utils.py`` in our words),
``_probe_max_used_gpu_mem_gb``'s contract, and offload_fsm's gate behind
``_wait_for_overlap_engines_offloaded``'s call shape (PR #17's wiring test d18231d77dbb
asks for a 7.0 GiB default and a raise when the residual stays high)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from offload_fsm.compat import rlix
from offload_fsm.compat.rlix import (
    RLIX_BEHAVIOUR,
    EnvValueError,
    OverlapGateOptions,
    make_overlap_wait,
    parse_env_positive_float,
    probe_max_used_gpu_mem_gb,
    wait_for_overlap_engines_offloaded,
)
from offload_fsm.core.errors import ConfigError, DeviceIdError, GateTimeout, GateUnmeasurable
from offload_fsm.events.bus import EventBus, Recorder
from offload_fsm.events.kinds import Event, GateDecision, GateTimedOut
from offload_fsm.probe.base import GIB
from offload_fsm.sim.fake_backend import FakeBackend, Fault
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from tests.fake_smi import FakeSmi

VAR = "MILES_MAX_RESIDUAL_GPU_MEM_GB"
QUERY = "--query-gpu=memory.used"
COTENANT = 2**22 + 29  # another pipeline's process: never in this test's process tree

# --- parse_env_positive_float ----------------------------------------------------------------


def test_env_unset_gives_the_default_as_a_float(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VAR, raising=False)
    got = parse_env_positive_float(VAR, 7)
    assert got == 7.0 and isinstance(got, float)


def test_env_override_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VAR, "12.25")
    assert parse_env_positive_float(VAR, 7.0) == 12.25


@pytest.mark.parametrize("raw", ["0", "-3", "-inf"])
def test_env_zero_or_negative_is_refused_as_rlix_refuses_it(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv(VAR, raw)
    with pytest.raises(RuntimeError) as info:  # what RLix raises, and its callers catch
        parse_env_positive_float(VAR, 7.0)
    assert str(info.value) == f"{VAR} must be > 0, got: {float(raw)!r}"
    assert isinstance(info.value, ConfigError) and info.value.name == VAR


@pytest.mark.parametrize("raw", ["lots", "", "7GiB"])
def test_env_non_number_is_refused_as_rlix_refuses_it(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv(VAR, raw)
    with pytest.raises(EnvValueError) as info:
        parse_env_positive_float(VAR, 7.0)
    assert isinstance(info.value, RuntimeError)
    assert str(info.value) == f"{VAR} must be a number, got: {raw!r}"
    assert info.value.name == VAR and info.value.value == raw


@pytest.mark.parametrize("raw", ["nan", "inf", "Infinity"])
def test_env_non_finite_is_refused_where_rlix_would_return_it(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv(VAR, raw)
    with pytest.raises(EnvValueError, match="must be a finite number"):
        parse_env_positive_float(VAR, 7.0)


def test_env_bad_default_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VAR, raising=False)
    with pytest.raises(ConfigError) as info:
        parse_env_positive_float(VAR, 0.0)
    assert info.value.name == "default"


# --- probe_max_used_gpu_mem_gb ---------------------------------------------------------------


def test_probe_is_the_max_over_the_asked_gpus_only(smi: FakeSmi) -> None:
    smi.answer(QUERY, "1024\n6656\n")
    assert probe_max_used_gpu_mem_gb([5, 2]) == 6.5
    assert smi.calls() == [["--id=5,2", QUERY, "--format=csv,noheader,nounits"]]


def test_probe_skips_a_gpu_without_a_figure(smi: FakeSmi) -> None:
    smi.answer(QUERY, "[N/A]\n2048\n\n")
    assert probe_max_used_gpu_mem_gb([0, 1]) == 2.0
    smi.answer(QUERY, "[N/A]\n[Insufficient Permissions]\n")
    assert probe_max_used_gpu_mem_gb([0, 1]) is None


def test_probe_asks_nothing_for_no_gpus(smi: FakeSmi) -> None:
    assert probe_max_used_gpu_mem_gb([]) is None
    assert smi.calls() == []


@pytest.mark.usefixtures("no_smi")
def test_probe_without_nvidia_smi_is_unknown() -> None:
    assert probe_max_used_gpu_mem_gb([0]) is None


def test_probe_that_fails_or_hangs_is_unknown(smi: FakeSmi) -> None:
    smi.answer(QUERY, rc=6, err="No devices were found")  # e.g. an id this machine lacks
    assert probe_max_used_gpu_mem_gb([9]) is None
    smi.answer(QUERY, "1024", sleep=5)
    t0 = time.monotonic()
    assert probe_max_used_gpu_mem_gb([0], timeout_s=0.5) is None
    assert time.monotonic() - t0 < 4


@pytest.mark.parametrize("ids", [[-1], [True], ["0"], [0.0]])
def test_probe_refuses_ids_that_are_not_physical_indices(smi: FakeSmi, ids: list[Any]) -> None:
    with pytest.raises(ConfigError) as info:
        probe_max_used_gpu_mem_gb(ids)
    assert info.value.name == "gpu_ids"
    assert smi.calls() == []


# --- wait_for_overlap_engines_offloaded --------------------------------------------------------


class Events(Recorder):
    """Keeps every event the gate emitted."""

    def __init__(self) -> None:
        super().__init__(EventBus(), "rlix-test")
        self.kept: list[Event] = []

    async def emit(self, kind: type[Any], **fields: Any) -> Any:
        event = kind(seq=len(self.kept) + 1, ts=0.0, run_id=self.run_id, **fields)
        self.kept.append(event)
        return event


class Pipeline:
    """The attributes of RLix's MilesPipeline that the wait reads."""

    def __init__(self, manager: object = None, pool: list[int] | None = None) -> None:
        self._pipeline_id = "p1"
        self._rollout_manager = manager
        args = SimpleNamespace(rollout_num_gpus=2, rollout_num_gpus_per_engine=1)
        mappings = {} if pool is None else {"actor_infer": pool}
        self._pipeline_config = SimpleNamespace(miles_args=args, cluster_device_mappings=mappings)


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> FakeGpus:
    monkeypatch.delenv(VAR, raising=False)
    return FakeGpus(make_devices(4))


def options(gpus: FakeGpus, **kw: Any) -> OverlapGateOptions:
    kw.setdefault("backend", FakeBackend(gpus))
    return OverlapGateOptions(**kw)


def test_the_call_shape_is_rlix_method(gpus: FakeGpus) -> None:
    class MilesPipeline(Pipeline):
        _wait_for_overlap_engines_offloaded = make_overlap_wait(options(gpus))

    gpus.set_usage(COTENANT, 1, 6 * GIB)
    assert MilesPipeline()._wait_for_overlap_engines_offloaded([0, 1], timeout_s=2.0) is None


def test_default_threshold_is_rlix_7_gib_and_a_high_residual_raises(gpus: FakeGpus) -> None:
    gpus.set_usage(COTENANT, 1, int(7.5 * GIB))  # under the project's 8, over RLix's 7
    wait = make_overlap_wait(options(gpus))
    with pytest.raises(GateTimeout) as info:
        wait(Pipeline(), [0, 1], timeout_s=0.2)
    assert info.value.threshold_bytes == 7 * GIB
    assert info.value.readings == {gpus.devices[0].key: 0, gpus.devices[1].key: int(7.5 * GIB)}


def test_the_env_threshold_is_read_with_rlix_parser(
    gpus: FakeGpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpus.set_usage(COTENANT, 1, int(7.5 * GIB))
    wait = make_overlap_wait(options(gpus))
    monkeypatch.setenv(VAR, "8")
    wait(Pipeline(), [1], timeout_s=1.0)
    monkeypatch.setenv(VAR, "0")
    with pytest.raises(RuntimeError, match="must be > 0"):
        wait(Pipeline(), [1], timeout_s=1.0)
    monkeypatch.setenv(VAR, "80")  # the fake GPUs hold 80 GiB: the gate could never close
    with pytest.raises(ConfigError, match=VAR):
        wait(Pipeline(), [1], timeout_s=1.0)


def test_the_gate_waits_for_the_memory_and_settles(gpus: FakeGpus) -> None:
    gpus.set_usage(COTENANT, 2, 30 * GIB)
    gpus.step(COTENANT, 2, 1 * GIB, after_s=0.2)  # the driver frees it after "200 OK"
    events = Events()
    t0 = time.monotonic()
    wait_for = make_overlap_wait(options(gpus, recorder=events))
    wait_for(Pipeline(), [2, 3], timeout_s=5.0)
    assert time.monotonic() - t0 >= 0.2
    decisions = [e for e in events.kept if isinstance(e, GateDecision)]
    assert decisions[-1].opened and decisions[-1].pipeline_id == "p1"
    assert decisions[-1].settle_count == 3  # three rounds in a row, not RLix's first one
    assert any(not d.passed for d in decisions)


def test_rlix_behaviour_opens_on_one_round_and_wakes_after_a_timeout(
    gpus: FakeGpus, caplog: pytest.LogCaptureFixture
) -> None:
    events = Events()
    wait = make_overlap_wait(options(gpus, settle_samples=1, recorder=events))
    wait(Pipeline(), [0], timeout_s=1.0)
    assert [e.settle_count for e in events.kept if isinstance(e, GateDecision)][-1] == 1

    gpus.set_usage(COTENANT, 0, 20 * GIB)
    lenient = OverlapGateOptions(
        settle_samples=RLIX_BEHAVIOUR.settle_samples,
        on_unmeasurable=RLIX_BEHAVIOUR.on_unmeasurable,
        on_timeout=RLIX_BEHAVIOUR.on_timeout,
        backend=FakeBackend(gpus),
        recorder=events,
    )
    with caplog.at_level(logging.WARNING):
        make_overlap_wait(lenient)(Pipeline(), [0], timeout_s=0.2)  # returns: RLix wakes
    assert "LOUD" in caplog.text and "on_timeout='warn'" in caplog.text
    assert any(isinstance(e, GateTimedOut) for e in events.kept)


def test_unmeasurable_memory_fails_closed_unless_grace_was_chosen(
    gpus: FakeGpus, caplog: pytest.LogCaptureFixture
) -> None:
    always = {i: Fault.unavailable() for i in range(1, 10_000)}
    strict = OverlapGateOptions(backend=FakeBackend(gpus, faults=always))
    with pytest.raises(GateUnmeasurable):
        make_overlap_wait(strict)(Pipeline(), [0], timeout_s=0.5)
    grace = OverlapGateOptions(
        on_unmeasurable="grace", grace_s=0.05, backend=FakeBackend(gpus, faults=always)
    )
    with caplog.at_level(logging.WARNING):
        make_overlap_wait(grace)(Pipeline(), [0], timeout_s=0.5)
    assert "on_unmeasurable='grace'" in caplog.text


def test_phase_one_waits_for_the_overlap_engines_to_report_offloaded(gpus: FakeGpus) -> None:
    asked: list[list[int]] = []

    def states(manager: object, indices: list[int]) -> Mapping[int, str]:
        asked.append(indices)
        return {i: "offloaded" if len(asked) >= 3 else "active" for i in indices}

    pipeline = Pipeline(manager=object(), pool=[2, 3])  # this pipeline's engines on GPUs 2, 3
    wait = make_overlap_wait(options(gpus, engine_states=states, state_poll_s=0.01))
    wait(pipeline, [0, 1, 2, 3], timeout_s=2.0)
    assert asked == [[0, 1]] * 3  # local indices of GPUs 2 and 3 only: 0 and 1 have none


def test_phase_one_trouble_never_skips_the_memory_gate(gpus: FakeGpus) -> None:
    def broken(manager: object, indices: list[int]) -> Mapping[int, str]:
        raise ConnectionError("rollout manager actor died")

    def stuck(manager: object, indices: list[int]) -> Mapping[int, str]:
        return {i: "active" for i in indices}

    gpus.set_usage(COTENANT, 0, 20 * GIB)
    for read in (broken, stuck):  # RLix returned without measuring after a failed read
        wait = make_overlap_wait(options(gpus, engine_states=read, state_poll_s=0.01))
        with pytest.raises(GateTimeout):
            wait(Pipeline(manager=object()), [0], timeout_s=0.2)


def test_nothing_granted_is_nothing_to_gate(gpus: FakeGpus) -> None:
    wait = make_overlap_wait(
        options(gpus, backend=FakeBackend(gpus, faults={1: Fault.unavailable()}))
    )
    assert wait(Pipeline(), [], timeout_s=0.2) is None


def test_bad_input_is_refused_by_name(gpus: FakeGpus) -> None:
    wait = make_overlap_wait(options(gpus))
    with pytest.raises(DeviceIdError, match="7"):
        wait(Pipeline(), [0, 7], timeout_s=0.2)  # a GPU this machine lacks is never skipped
    with pytest.raises(ConfigError) as info:
        wait(Pipeline(), [-1], timeout_s=0.2)
    assert info.value.name == "allocated_train_gpus"
    with pytest.raises(ConfigError) as info:
        wait(Pipeline(), [0], timeout_s=0)
    assert info.value.name == "timeout_s"
    for bad in ({"settle_samples": 0}, {"on_timeout": "ignore"}, {"on_unmeasurable": "open"}):
        with pytest.raises(ConfigError):
            OverlapGateOptions(**bad)  # type: ignore[arg-type]


def test_the_module_default_is_the_safe_one() -> None:
    assert wait_for_overlap_engines_offloaded.__name__ == "_wait_for_overlap_engines_offloaded"
    assert OverlapGateOptions() == OverlapGateOptions(
        settle_samples=3, on_unmeasurable="fail", on_timeout="fail"
    )
    assert (RLIX_BEHAVIOUR.settle_samples, RLIX_BEHAVIOUR.on_unmeasurable) == (1, "grace")
    assert RLIX_BEHAVIOUR.on_timeout == "warn"
    assert rlix.RLIX_DEFAULT_THRESHOLD_GB == 7.0
