"""Fault matrix, probe rows: what measuring can do wrong, and what per-process figures hide.

- The simulated backend (virtual time): transient errors at random polls, a GPU lost mid-gate,
  rounds that hang past their deadline, no backend at all, fail-open.
- The real NVML backend over an injected pynvml module that raises nvidia-ml-py's own
  ``NVMLError_*`` classes (real time, short deadlines): Timeout/Unknown at random calls,
  GpuIsLost mid-gate, a call that hangs past its deadline.
- nvidia-smi as an executable on PATH (real processes): the fallback when NVML is missing,
  missing too, printing garbage, hanging.
- Per-process figures: usage unknown, a foreign PID namespace, a process tree vanishing
  mid-walk, a recycled PID.

Every row: the gate never opens over the threshold (or on an unmeasured round), the engine
ends in a documented state, the cause is named, and the log is complete and replays clean.
"""

from __future__ import annotations

import random
import stat
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import psutil
import pynvml
import pytest

from offload_fsm.commands import cli
from offload_fsm.commands import gate as gate_command
from offload_fsm.core.errors import (
    BackendUnavailable,
    DeviceUnhealthy,
    GateTimeout,
    GateUnmeasurable,
)
from offload_fsm.core.lifecycle import State
from offload_fsm.events.kinds import (
    AttributionReport,
    GateDecision,
    GateFailOpen,
    GateTimedOut,
    ProbeGaveUp,
    ProbeRetry,
    RunStarted,
)
from offload_fsm.orchestrator.orchestrator import EngineSpec
from offload_fsm.probe.base import GIB, MIB, GpuDevice, ProbeBackend
from offload_fsm.probe.nvml import NvmlBackend
from offload_fsm.probe.retry import RetryPolicy
from offload_fsm.probe.select import open_backend
from offload_fsm.settings import GatePolicy
from offload_fsm.sim.engine import SimEngine
from offload_fsm.sim.fake_backend import FakeBackend, Fault
from offload_fsm.sim.sim_model import FaultPlan
from offload_fsm.timing.clock import RealClock
from tests.probe.fake_nvml import FakeNvml, FakeNvmlGpu, h200s
from tests.probe.procfs import make_proc
from tests.reliability.rig import ENGINE_FP, Rig, check_log, open_rig

FAST_RETRY = RetryPolicy(attempts=3, initial_s=0.001, max_s=0.01, jitter_s=0.0, call_timeout_s=0.5)
CONTEXT = int(0.6 * GIB)
FULL = 30 * GIB


# --- the simulated backend (virtual time) ---------------------------------------------------


def _flaky(seed: int, rate: float) -> Callable[[Any], ProbeBackend]:
    """A fake backend with NVML-style transient errors injected at random polls."""

    def make(gpus: Any) -> ProbeBackend:
        backend = FakeBackend(gpus)
        rng = random.Random(seed)
        for poll in range(1, 3000):
            if rng.random() < rate:
                backend.inject(poll, Fault.transient(rng.choice(["Timeout", "Unknown Error"])))
        return backend

    return make


@pytest.mark.parametrize("retry", [FAST_RETRY, None], ids=["retried", "unretried"])
async def test_transient_errors_at_random_polls(tmp_path: Path, retry: RetryPolicy | None) -> None:
    """A co-tenant holds the GPU for 2 s while a third of all polls fail: the gate opens
    only after it left, never on an unmeasured round; retries are logged."""
    async with open_rig(tmp_path, probe=_flaky(7, 0.33), retry=retry) as rig:
        await rig.add_sim("a", [1], initial=State.SLEPT)
        await rig.add_sim("b", [2])
        assert rig.gpus is not None
        rig.gpus.cotenant(31337, 1, 12 * GIB, leave_s=2.0)
        for _ in range(3):  # several cycles through the noise
            await rig.orch.wake("a")
            await rig.orch.release("a")
            await rig.orch.release("b")
            await rig.orch.wake("b")
        assert rig.clock.now() >= 2.0
    check = check_log(rig)
    if retry is not None:
        retries = check.of(ProbeRetry)
        assert retries and all("Timeout" in r.error or "Unknown Error" in r.error for r in retries)
    unmeasured = [d for d in check.of(GateDecision) if d.detail.startswith("unmeasured:")]
    assert all(not d.opened for d in unmeasured)
    if retry is None:
        assert unmeasured  # without retries the failures reach the gate, which stays shut


@pytest.mark.parametrize("gate", ["wake", "release"])
async def test_gpu_lost_mid_gate(tmp_path: Path, gate: str) -> None:
    async with open_rig(tmp_path, retry=FAST_RETRY) as rig:
        assert rig.gpus is not None
        initial = State.SLEPT if gate == "wake" else State.ACTIVE
        faults = FaultPlan().on("release", "late_release", delay_s=1.0)
        sim = await rig.add_sim("a", [0], initial=initial, faults=faults)
        rig.gpus.cotenant(31337, 0, 12 * GIB, leave_s=3.0)
        probe = rig.orch.probe.inner  # type: ignore[attr-defined]
        probe.inject(probe.rounds + 5, Fault.gpu_lost("gpu0"))
        op = rig.orch.wake("a") if gate == "wake" else rig.orch.release("a")
        with pytest.raises(DeviceUnhealthy, match="GPU is lost"):
            await op
        if gate == "wake":
            assert rig.orch.state("a") is State.SLEPT  # never resumed onto a lost GPU
            assert sim.calls["resume"] == 0
        else:
            assert rig.orch.state("a") is State.FAILED
    check = check_log(rig)
    assert "DeviceUnhealthy" in check.last_reason("a")
    gave_up = check.of(ProbeGaveUp)
    assert [g.error_type for g in gave_up] == ["DeviceUnhealthy"]


async def test_probe_rounds_that_hang_past_their_deadline(tmp_path: Path) -> None:
    """Every round hangs for 10 s against a 0.5 s probe deadline: each is abandoned, the
    gate never measures anything and fails closed at its deadline."""
    policy = GatePolicy(deadline_s=3.0, probe_timeout_s=0.5)

    def hanging(gpus: Any) -> ProbeBackend:
        backend = FakeBackend(gpus, faults={n: Fault.hang(10.0) for n in range(1, 500)})
        return backend

    async with open_rig(tmp_path, probe=hanging, wake_gate=policy) as rig:
        sim = await rig.add_sim("a", [0], initial=State.SLEPT)
        t0 = rig.clock.now()
        with pytest.raises(GateUnmeasurable, match="failing closed"):
            await rig.orch.wake("a")
        assert 3.0 <= rig.clock.now() - t0 < 3.0 + 0.5 + 1e-6  # bounded by the deadline
        assert rig.orch.state("a") is State.SLEPT and sim.calls["resume"] == 0
    check = check_log(rig)
    assert check.of(GateTimedOut, "a")[0].unmeasured
    assert "memory could not be measured for 3 s" in check.last_reason("a")


async def test_a_hung_round_is_abandoned_and_the_next_one_counts(tmp_path: Path) -> None:
    policy = GatePolicy(deadline_s=5.0, probe_timeout_s=0.5)
    faults = {n: Fault.hang(10.0) for n in (2, 3, 5)}
    async with open_rig(
        tmp_path, probe=lambda g: FakeBackend(g, faults=faults), wake_gate=policy
    ) as rig:
        await rig.add_sim("a", [0], initial=State.SLEPT)
        await rig.orch.wake("a")
        assert rig.orch.state("a") is State.ACTIVE
    check = check_log(rig)
    assert any(d.detail.startswith("unmeasured: probe round hung") for d in check.of(GateDecision))


async def test_hung_rounds_inside_release_and_resume_leave_later_calls_their_deadlines(
    tmp_path: Path,
) -> None:
    """A release arms one cancel scope around its calls, its resident probe and its gate's
    rounds (a resume around its calls and gate). A hung round spends that scope: it is
    replaced, so the engine calls and rounds after it still run, each with a deadline."""
    gate = GatePolicy(deadline_s=5.0, probe_timeout_s=0.5)
    # Round 1 (the resident probe before the first release call) hangs, then round 3 (the
    # release gate's second: it settles again on 4-6); the wake gate takes 7-9. The second
    # release probes 10 and gates 11-13, the wake 14-16; round 17, the resume gate's first
    # (run now that the resident bytes are known), hangs.
    faults = {n: Fault.hang(10.0) for n in (1, 3, 17)}
    async with open_rig(
        tmp_path,
        probe=lambda g: FakeBackend(g, faults=faults),
        release_gate=gate,
        resume_gate=GatePolicy(deadline_s=5.0, probe_timeout_s=0.5, settle_samples=1),
        share_probe_rounds=False,
    ) as rig:
        sim = await rig.add_sim("a", [0])
        await rig.orch.release("a")
        assert rig.orch.state("a") is State.SLEPT
        assert rig.orch.engine("a").resident_before is None  # its probe hung: unknown
        assert sim.calls["release"] == 1  # the call after the spent scope still ran
        await rig.orch.wake("a")
        await rig.orch.release("a")
        assert rig.orch.engine("a").resident_before  # measured this time
        await rig.orch.wake("a")
        assert rig.orch.state("a") is State.ACTIVE
        assert sim.calls["finish_wake"] == 2
    hung = [d for d in check_log(rig).of(GateDecision) if "probe round hung" in d.detail]
    assert [d.gate for d in hung] == ["release", "resume"]


async def test_no_backend_fails_closed_and_fail_open_is_loud(tmp_path: Path) -> None:
    def gone(gpus: Any) -> ProbeBackend:
        return FakeBackend(gpus, faults={n: Fault.unavailable() for n in range(1, 50)})

    async with open_rig(tmp_path / "closed", probe=gone) as rig:
        sim = await rig.add_sim("a", [0], initial=State.SLEPT)
        with pytest.raises(GateUnmeasurable):
            await rig.orch.wake("a")
        assert rig.orch.state("a") is State.SLEPT and sim.calls["resume"] == 0
    assert "Library Not Found" in check_log(rig).last_reason("a")

    loud = GatePolicy(fail_open=True)
    async with open_rig(tmp_path / "open", probe=gone, wake_gate=loud) as rig:
        await rig.add_sim("a", [0], initial=State.SLEPT)
        await rig.orch.wake("a")  # the resume gate's unmeasured rounds pass by policy
        assert rig.orch.state("a") is State.ACTIVE
    check = check_log(rig)  # accepts it only because the run says fail_open
    assert check.of(RunStarted)[0].fail_open
    assert [e.gate for e in check.of(GateFailOpen, "a")] == ["wake"]
    waking = [t for t in check.transitions("a") if t.dst == "waking"]
    assert "FAIL-OPEN" in (waking[0].reason or "")


# --- the NVML backend over an injected pynvml (real time) -----------------------------------


class FlakyNvml(FakeNvml):
    """Raises real ``pynvml.NVMLError_*`` at seeded random calls; loses the GPU on request."""

    def __init__(self, gpus: list[FakeNvmlGpu], *, rate: float = 0.0, lose_at: int = 0) -> None:
        super().__init__(gpus)
        self.rng = random.Random(3)
        self.rate = rate
        self.lose_at = lose_at  # the n-th memory call reports GpuIsLost
        self.memory_calls = 0
        self.injected: Counter[str] = Counter()

    def _enter(self, name: str) -> None:
        super()._enter(name)
        if name == "nvmlDeviceGetMemoryInfo_v2":
            self.memory_calls += 1
            if self.memory_calls == self.lose_at:
                raise pynvml.NVMLError_GpuIsLost()
        if name.startswith("nvmlDeviceGet") and self.rate and self.rng.random() < self.rate:
            error = self.rng.choice([pynvml.NVMLError_Timeout, pynvml.NVMLError_Unknown])()
            self.injected[type(error).__name__] += 1
            raise error


@dataclass
class LedgerEngine:
    """An engine whose memory lives in a fake NVML GPU's process list."""

    engine_id: str
    gpu: FakeNvmlGpu
    pid: int
    name: str = "nvml-ledger"

    @property
    def process_root(self) -> int | None:
        return self.pid

    async def prepare_release(self, drain_timeout_s: float) -> None:
        return None

    async def release(self, tags: Any) -> None:
        self.gpu.processes[self.pid] = CONTEXT

    async def resume(self, tags: Any) -> None:
        self.gpu.processes[self.pid] = FULL

    async def finish_wake(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _real_time(**kw: Any) -> dict[str, Any]:
    gate = {"poll_max_s": 0.01, "probe_timeout_s": 0.5}
    return {
        "clock": RealClock(),
        "retry": FAST_RETRY,
        "wake_gate": GatePolicy(deadline_s=kw.pop("wake_s", 2.0), **gate),
        "release_gate": GatePolicy(deadline_s=2.0, **gate),
        "resume_gate": GatePolicy(deadline_s=2.0, settle_samples=1, **gate),
        **kw,
    }


async def _nvml_rig_engine(rig: Rig, nv: FakeNvml, devices: tuple[GpuDevice, ...]) -> None:
    gpu = nv.gpus[0]
    gpu.processes[100] = CONTEXT  # slept
    await rig.orch.register(
        EngineSpec(
            "a",
            LedgerEngine("a", gpu, 100),
            devices[:1],
            initial=State.SLEPT,
            pids=lambda: frozenset({100}),
        )
    )


def _nvml_truth(nv: FakeNvml) -> Callable[[str], int | None]:
    return lambda key: next(g.used for g in nv.gpus if g.uuid == key)


async def _cotenant_leaves(gpu: FakeNvmlGpu, after_s: float) -> None:
    await anyio.sleep(after_s)
    del gpu.processes[999]


async def test_nvml_timeout_and_unknown_at_random_calls(tmp_path: Path) -> None:
    nv = FlakyNvml(h200s(2))
    backend = NvmlBackend(nv)
    devices = await backend.devices()
    nv.rate = 0.25  # from now on a quarter of the NVML calls fail
    nv.gpus[0].processes[999] = 12 * GIB
    try:
        async with open_rig(tmp_path, probe=backend, truth=_nvml_truth(nv), **_real_time()) as rig:
            await _nvml_rig_engine(rig, nv, devices)
            rig.tg.start_soon(_cotenant_leaves, nv.gpus[0], 0.15)
            await rig.orch.wake("a")
            assert rig.orch.state("a") is State.ACTIVE
            await rig.orch.release("a")
    finally:
        await backend.aclose()
    assert nv.injected["NVMLError_Timeout"] and nv.injected["NVMLError_Unknown"]
    check = check_log(rig)
    texts = " ".join(r.error for r in check.of(ProbeRetry))
    assert "Timeout" in texts or "Unknown" in texts


async def test_nvml_gpu_lost_mid_gate(tmp_path: Path) -> None:
    nv = FlakyNvml(h200s(1), lose_at=6)
    backend = NvmlBackend(nv)
    devices = await backend.devices()
    nv.gpus[0].processes[999] = 12 * GIB  # the gate waits, polling, until the GPU is lost
    try:
        async with open_rig(tmp_path, probe=backend, truth=_nvml_truth(nv), **_real_time()) as rig:
            await _nvml_rig_engine(rig, nv, devices)
            with pytest.raises(DeviceUnhealthy, match="GPU is lost"):
                await rig.orch.wake("a")
            assert rig.orch.state("a") is State.SLEPT
            assert nv.gpus[0].processes[100] == CONTEXT  # never resumed
    finally:
        await backend.aclose()
    check = check_log(rig)
    assert [g.error_type for g in check.of(ProbeGaveUp)] == ["DeviceUnhealthy"]
    assert "GPU is lost" in check.last_reason("a")


async def test_nvml_call_that_hangs_past_its_deadline(tmp_path: Path) -> None:
    nv = FakeNvml(h200s(1))
    backend = NvmlBackend(nv, close_timeout_s=0.05)
    devices = await backend.devices()
    retry = RetryPolicy(attempts=2, initial_s=0.001, jitter_s=0.0, call_timeout_s=0.1)
    nv.block("nvmlDeviceGetMemoryInfo_v2")
    t0 = time.monotonic()
    try:
        rig_kw = _real_time(wake_s=0.6, retry=retry)
        async with open_rig(tmp_path, probe=backend, truth=_nvml_truth(nv), **rig_kw) as rig:
            await _nvml_rig_engine(rig, nv, devices)
            with pytest.raises(GateUnmeasurable, match="failing closed"):
                await rig.orch.wake("a")
            assert rig.orch.state("a") is State.SLEPT
        assert time.monotonic() - t0 < 3.0  # bounded: the hung call was abandoned
    finally:
        nv.release()
        await backend.aclose()
    check = check_log(rig)
    assert {g.error_type for g in check.of(ProbeGaveUp)} == {"ProbeTimeout"}
    assert check.of(GateTimedOut, "a")[0].unmeasured


# --- nvidia-smi as an executable on PATH (real processes) -----------------------------------

SMI = r"""#!/bin/sh
dir="$(dirname "$0")"
[ -f "$dir/hang" ] && exec sleep 30
case "$*" in
  *--query-gpu=*) cat "$dir/gpu.csv";;
  *--query-compute-apps=*) cat "$dir/apps.csv";;
  *) echo "unexpected: $*" >&2; exit 3;;
esac
"""
SMI_UUID = "GPU-8f0b1c2d-1111-2222-3333-444455556666"
SMI_BUS = "00000000:18:00.0"


class SmiGpu:
    """One GPU as the fake nvidia-smi prints it; engines move its numbers in files."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir()
        exe = directory / "nvidia-smi"
        exe.write_text(SMI)
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
        self.procs: dict[int, int] = {}
        self.write()

    @property
    def used(self) -> int:
        return sum(self.procs.values())

    def write(self) -> None:
        used_mib, total = self.used // MIB, 143771
        row = f"0, {SMI_UUID}, {SMI_BUS}, NVIDIA H200, {total}, 613, {used_mib}, "
        (self.dir / "gpu.csv").write_text(row + f"{total - 613 - used_mib}\n")
        apps = "".join(f"{SMI_BUS}, {pid}, {b // MIB}\n" for pid, b in self.procs.items())
        (self.dir / "apps.csv").write_text(apps)

    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.dir}:/usr/bin:/bin"}


@dataclass
class SmiEngine:
    engine_id: str
    gpu: SmiGpu
    pid: int
    name: str = "smi-ledger"

    @property
    def process_root(self) -> int | None:
        return self.pid

    async def prepare_release(self, drain_timeout_s: float) -> None:
        return None

    async def release(self, tags: Any) -> None:
        self.gpu.procs[self.pid] = CONTEXT
        self.gpu.write()

    async def resume(self, tags: Any) -> None:
        self.gpu.procs[self.pid] = FULL
        self.gpu.write()

    async def finish_wake(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


NO_NVML = FakeNvml([], init_error=pynvml.NVMLError_LibraryNotFound())


async def _smi_rig(tmp_path: Path, gpu: SmiGpu, **kw: Any) -> tuple[ProbeBackend, dict[str, Any]]:
    backend = await open_backend(
        "auto", nvml_module=NO_NVML, smi_env=gpu.env(), smi_timeout_s=kw.pop("smi_timeout", 2.0)
    )
    assert backend.name == "smi"  # NVML is missing: the fallback
    rig_kw = _real_time(**kw)
    for name in ("wake_gate", "release_gate", "resume_gate"):
        rig_kw[name] = GatePolicy(**{**_policy_fields(rig_kw[name]), "poll_max_s": 0.05})
    return backend, {"probe": backend, "truth": lambda key: gpu.used, **rig_kw}


def _policy_fields(p: GatePolicy) -> dict[str, Any]:
    return {f: getattr(p, f) for f in p.__dataclass_fields__}


async def _smi_engine(rig: Rig, gpu: SmiGpu, backend: ProbeBackend) -> None:
    gpu.procs[100] = CONTEXT
    gpu.write()
    devices = await backend.devices()
    await rig.orch.register(
        EngineSpec(
            "a",
            SmiEngine("a", gpu, 100),
            devices,
            initial=State.SLEPT,
            pids=lambda: frozenset({100}),
        )
    )


async def test_nvml_missing_falls_back_to_nvidia_smi(tmp_path: Path) -> None:
    gpu = SmiGpu(tmp_path / "bin")
    gpu.procs[999] = 12 * GIB
    gpu.write()
    backend, kw = await _smi_rig(tmp_path, gpu, wake_s=0.6)
    async with open_rig(tmp_path / "log", **kw) as rig:
        await _smi_engine(rig, gpu, backend)
        with pytest.raises(GateTimeout):  # measured through nvidia-smi: the co-tenant
            await rig.orch.wake("a")
        del gpu.procs[999]
        gpu.write()
        await rig.orch.wake("a")
        await rig.orch.release("a")
        assert rig.orch.state("a") is State.SLEPT
    check = check_log(rig)
    assert check.of(RunStarted)[0].backend == "smi"
    report = next(r for r in check.of(AttributionReport, "a") if r.context == "wake_timeout")
    assert (999, "foreign") in {(p.pid, p.owner) for p in report.processes}


async def test_nvml_and_nvidia_smi_both_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(BackendUnavailable) as info:
        await open_backend("auto", nvml_module=NO_NVML, smi_env={"PATH": str(tmp_path)})
    assert "NVML" in str(info.value) and "nvidia-smi was not found on PATH" in str(info.value)

    real_open = open_backend

    async def no_backend(name: str = "auto") -> ProbeBackend:
        return await real_open(name, nvml_module=NO_NVML, smi_env={"PATH": str(tmp_path)})

    monkeypatch.setattr(gate_command, "open_backend", no_backend)
    assert await anyio.to_thread.run_sync(cli.main, ["gate", "--gpus", "0", "--quiet"]) == 4
    out = capsys.readouterr()
    assert out.out.count("\n") == 1 and "CLOSED, memory could not be measured" in out.out
    assert "Traceback" not in out.err


async def test_nvidia_smi_printing_garbage_fails_closed(tmp_path: Path) -> None:
    gpu = SmiGpu(tmp_path / "bin")
    backend, kw = await _smi_rig(tmp_path, gpu, wake_s=0.5)
    async with open_rig(tmp_path / "log", **kw) as rig:
        await _smi_engine(rig, gpu, backend)
        (gpu.dir / "gpu.csv").write_text("\x00\x01 garbage, [N/A]\nNVIDIA-SMI has failed\n")
        with pytest.raises(GateUnmeasurable, match="failing closed"):
            await rig.orch.wake("a")
        assert rig.orch.state("a") is State.SLEPT and gpu.procs[100] == CONTEXT
    check = check_log(rig)
    assert check.of(GateTimedOut, "a")[0].unmeasured


async def test_nvidia_smi_hanging_is_killed_and_fails_closed(tmp_path: Path) -> None:
    gpu = SmiGpu(tmp_path / "bin")
    backend, kw = await _smi_rig(tmp_path, gpu, wake_s=0.8, smi_timeout=0.2)
    me = psutil.Process()
    async with open_rig(tmp_path / "log", **kw) as rig:
        await _smi_engine(rig, gpu, backend)
        (gpu.dir / "hang").touch()
        t0 = time.monotonic()
        with pytest.raises(GateUnmeasurable):
            await rig.orch.wake("a")
        assert time.monotonic() - t0 < 5.0
        assert rig.orch.state("a") is State.SLEPT
    check = check_log(rig)
    assert "did not answer within 0.2 s" in " ".join(r.error for r in check.of(ProbeRetry))
    assert check.of(GateTimedOut, "a")[0].unmeasured
    for _ in range(100):  # every hung nvidia-smi was killed, none is left behind
        if not [c for c in me.children(recursive=True) if "sleep" in c.name()]:
            break
        await anyio.sleep(0.02)
    assert not [c for c in me.children(recursive=True) if "sleep" in c.name()]


# --- per-process figures ---------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["pass", "fail"])
async def test_per_process_usage_unknown(tmp_path: Path, policy: str) -> None:
    """The driver will not say a process's usage (None): the release gate cannot measure
    the engine; "pass" (default) trusts the whole-GPU wake gate, "fail" fails closed."""
    async with open_rig(tmp_path, release_unmeasured=policy) as rig:
        sim = await rig.add_sim("a", [0])
        await rig.add_sim("b", [0], initial=State.SLEPT)
        assert rig.gpus is not None
        rig.gpus.hide_usage(sim.pid)
        if policy == "pass":
            await rig.orch.release("a")
            assert rig.orch.state("a") is State.SLEPT
            await rig.orch.wake("b")  # whole-GPU figures are still known: it opens
        else:
            with pytest.raises(GateTimeout):
                await rig.orch.release("a")
            assert rig.orch.state("a") is State.FAILED
    check = check_log(rig)
    release = [d for d in check.of(GateDecision, "a") if d.gate == "release"]
    assert f"unmeasured: no process of the engine visible on its GPUs (policy: {policy})" in (
        release[-1].detail
    )


async def test_foreign_pid_namespace(tmp_path: Path) -> None:
    """In a container's own PID namespace NVML's PIDs are not ours: per-process figures are
    unknown, whole-GPU ones still guard every wake."""
    async with open_rig(tmp_path, pid_namespace="foreign") as rig:
        assert rig.gpus is not None
        rig.gpus.foreign_pids(100_000)
        await rig.add_sim("a", [0], faults=FaultPlan().on("release", "no_release"))
        await rig.add_sim("b", [0], initial=State.SLEPT)
        await rig.orch.release("a")  # cannot be measured per process: passes, says so
        assert rig.orch.state("a") is State.SLEPT
        with pytest.raises(GateTimeout):  # but a's memory is still there: b stays out
            await rig.orch.wake("b")
        assert rig.orch.state("b") is State.SLEPT
    check = check_log(rig)
    report = [r for r in check.of(AttributionReport, "b") if r.context == "wake_timeout"][-1]
    assert report.pid_namespace == "foreign"
    assert {p.owner for p in report.processes} == {"unknown"}


@dataclass
class Rooted:
    """An adapter whose process tree starts at ``root`` (its memory is in a child)."""

    inner: SimEngine
    root: int
    name: str = "sim"

    @property
    def process_root(self) -> int | None:
        return self.root

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)


async def _rooted(rig: Rig, eid: str, root: int, child: int, **kw: Any) -> SimEngine:
    assert rig.gpus is not None
    sim = SimEngine(eid, rig.gpus, [0], pid=child, footprint=ENGINE_FP, **kw)
    await rig.orch.register(EngineSpec(eid, Rooted(sim, root), sim.devices))  # type: ignore[arg-type]
    return sim


@pytest.mark.parametrize("freed", [True, False])
async def test_process_tree_vanishing_mid_walk(tmp_path: Path, freed: bool) -> None:
    """The engine's worker vanished between listing /proc and reading its stat file: the
    tree is only the launcher, the release gate cannot see the worker ("unmeasured"), and
    the whole-GPU gate still keeps a neighbour off memory the worker left behind."""
    proc = make_proc(tmp_path / "proc", [(1, 0, "init"), (700, 1, "python launch")])
    (proc / "701").mkdir()  # listed, but its stat file is gone: it vanished mid-walk
    faults = None if freed else FaultPlan().on("release", "no_release")
    async with open_rig(tmp_path / "log", proc_root=str(proc)) as rig:
        await _rooted(rig, "a", 700, 701, faults=faults)
        await rig.add_sim("b", [0], initial=State.SLEPT)
        await rig.orch.release("a")
        assert rig.orch.state("a") is State.SLEPT  # unmeasured: passes by the default policy
        if freed:
            await rig.orch.wake("b")
        else:
            with pytest.raises(GateTimeout):
                await rig.orch.wake("b")
    check = check_log(rig)
    release = [d for d in check.of(GateDecision, "a") if d.gate == "release"][-1]
    assert release.detail.startswith("unmeasured")
    if not freed:
        report = [r for r in check.of(AttributionReport, "b") if r.context == "wake_timeout"][-1]
        assert (701, "foreign") in {(p.pid, p.owner) for p in report.processes}


def _stat_with_start(pid: int, ppid: int, comm: str, start: int) -> str:
    fields = ["S", ppid, pid, pid, 0, -1, 4194560, 100, 0, 0, 0, 5, 3, 0, 0, 20, 0, 1, 0, start]
    return f"{pid} ({comm}) " + " ".join(map(str, fields)) + "\n"


async def test_pid_reuse_is_not_the_engine(tmp_path: Path) -> None:
    """The engine's launcher died and its PID now belongs to an unrelated process holding
    GPU memory: the gate stays shut (whole GPU) and the report must not blame the engine."""
    proc = make_proc(tmp_path / "proc", [(1, 0, "init")])
    (proc / "700").mkdir()
    (proc / "700" / "stat").write_text(_stat_with_start(700, 1, "python launch", 5000))
    (proc / "701").mkdir()
    (proc / "701" / "stat").write_text(_stat_with_start(701, 700, "sglang::scheduler", 5001))
    async with open_rig(tmp_path / "log", proc_root=str(proc)) as rig:
        sim = await _rooted(rig, "a", 700, 701)
        await rig.orch.release("a")
        sim.kill()  # the engine dies; its pids are recycled
        (proc / "701" / "stat").unlink()
        (proc / "701").rmdir()
        (proc / "700" / "stat").write_text(_stat_with_start(700, 1, "python unrelated.py", 9000))
        assert rig.gpus is not None
        rig.gpus.set_usage(700, 0, 20 * GIB)  # the new owner of pid 700
        with pytest.raises(GateTimeout):
            await rig.orch.wake("a")
        assert rig.orch.state("a") is State.SLEPT
    check = check_log(rig)
    report = [r for r in check.of(AttributionReport, "a") if r.context == "wake_timeout"][-1]
    assert (700, "foreign") in {(p.pid, p.owner) for p in report.processes}
