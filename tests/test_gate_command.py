from __future__ import annotations

import argparse
import io

import pytest

from offload_fsm.commands.cli import build_parser, main
from offload_fsm.commands.gate import EXIT_OPEN, EXIT_TIMEOUT, EXIT_UNMEASURABLE, gate_command
from offload_fsm.core.errors import ConfigError, DeviceIdError
from offload_fsm.probe.base import GIB
from offload_fsm.sim.fake_backend import FakeBackend, Fault
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["gate", "--quiet", *argv])


async def _run(args: argparse.Namespace, backend: FakeBackend) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await gate_command(args, backend, out, err)
    return code, out.getvalue()


async def test_opens_when_memory_is_low() -> None:
    gpus = FakeGpus(make_devices(2))
    gpus.set_usage(10, 1, 2 * GIB)
    code, out = await _run(_args("--gpus", "0,1", "--threshold", "4"), FakeBackend(gpus))
    assert code == EXIT_OPEN
    assert "open after" in out and "threshold 4.00 GiB from flag" in out


async def test_times_out_with_attribution_report() -> None:
    gpus = FakeGpus(make_devices(2))
    gpus.set_usage(4242, 1, 20 * GIB)  # nobody's engine: a co-tenant
    args = _args("--gpus", "1", "--threshold", "8", "--timeout", "0.2")
    code, out = await _run(args, FakeBackend(gpus))
    assert code == EXIT_TIMEOUT
    assert "TIMED OUT" in out and "4242" in out and "foreign" in out


async def test_unmeasurable_fails_closed() -> None:
    gpus = FakeGpus(make_devices(1))
    backend = FakeBackend(gpus)
    for poll in range(1, 400):
        backend.inject(poll, Fault.transient())
    code, out = await _run(_args("--gpus", "0", "--timeout", "0.3"), backend)
    assert code == EXIT_UNMEASURABLE
    assert "CLOSED" in out


async def test_threshold_from_env_and_bad_env(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = FakeGpus(make_devices(1))
    monkeypatch.setenv("MILES_MAX_RESIDUAL_GPU_MEM_GB", "7")
    code, out = await _run(_args("--gpus", "0"), FakeBackend(gpus))
    assert code == EXIT_OPEN and "threshold 7.00 GiB from MILES_MAX_RESIDUAL_GPU_MEM_GB" in out
    for bad in ["", "abc", "0", "-1", "nan", "inf"]:
        monkeypatch.setenv("MILES_MAX_RESIDUAL_GPU_MEM_GB", bad)
        with pytest.raises(ConfigError, match="MILES_MAX_RESIDUAL_GPU_MEM_GB"):
            await _run(_args("--gpus", "0"), FakeBackend(gpus))


async def test_unknown_gpu_is_a_typed_error() -> None:
    with pytest.raises(DeviceIdError):
        await _run(_args("--gpus", "7"), FakeBackend(FakeGpus(make_devices(2))))


def test_cli_user_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["gate", "--gpus", "0", "--backend", "fake", "--threshold", "zero"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.strip().count("\n") == 0
    assert "--threshold='zero'" in captured.err
    assert "Traceback" not in captured.err


def test_cli_gate_opens_on_the_fake_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate", "--gpus", "0", "--backend", "fake", "--quiet"]) == 0
    assert "open after" in capsys.readouterr().out
