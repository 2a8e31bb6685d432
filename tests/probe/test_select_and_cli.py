"""Backend selection, ``offload-fsm probe`` and ``offload-fsm doctor``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pynvml
import pytest

from offload_fsm.commands import cli
from offload_fsm.commands.doctor import diagnose, render
from offload_fsm.commands.probe import FAKE_COTENANT_PID, parse_engine_pids
from offload_fsm.core.errors import BackendUnavailable, ConfigError
from offload_fsm.probe.nvml import NvmlBackend
from offload_fsm.probe.select import open_backend
from offload_fsm.probe.smi import SmiBackend
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from tests.probe.fake_nvml import FakeNvml, h200s
from tests.probe.procfs import make_proc
from tests.probe.test_smi import smi_dir  # noqa: F401 (fixture)

NO_LIB = pynvml.NVMLError_LibraryNotFound


def smi_env(directory: Path) -> dict[str, str]:
    return {"PATH": f"{directory}:/usr/bin:/bin"}


async def test_auto_prefers_nvml() -> None:
    backend = await open_backend("auto", nvml_module=FakeNvml(h200s(1)))
    assert isinstance(backend, NvmlBackend)
    await backend.aclose()


async def test_auto_falls_back_to_smi(smi_dir: Path) -> None:  # noqa: F811
    backend = await open_backend(
        "auto", nvml_module=FakeNvml([], init_error=NO_LIB()), smi_env=smi_env(smi_dir)
    )
    assert isinstance(backend, SmiBackend)


async def test_auto_names_both_failures(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable) as info:
        await open_backend(
            "auto", nvml_module=FakeNvml([], init_error=NO_LIB()), smi_env={"PATH": str(tmp_path)}
        )
    text = str(info.value)
    assert "NVML: NVML cannot be initialised: NVML Shared Library Not Found" in text
    assert "nvidia-smi: nvidia-smi was not found on PATH" in text


async def test_named_backends_do_not_fall_back(smi_dir: Path) -> None:  # noqa: F811
    with pytest.raises(BackendUnavailable, match="NVML"):
        await open_backend(
            "nvml", nvml_module=FakeNvml([], init_error=NO_LIB()), smi_env=smi_env(smi_dir)
        )
    assert isinstance(await open_backend("smi", smi_env=smi_env(smi_dir)), SmiBackend)
    gpus = FakeGpus(make_devices(3))
    fake = await open_backend("fake", fake=gpus)
    assert isinstance(fake, FakeBackend) and fake.gpus is gpus
    with pytest.raises(ConfigError, match="backend='cuda'"):
        await open_backend("cuda")


def test_engine_pid_parsing() -> None:
    assert parse_engine_pids(["12", "rollout=34"]) == {"pid12": 12, "rollout": 34}
    for bad in (["x"], ["a=b"], ["=5"], ["0"], ["a=1", "a=2"], ["¹"], ["a=²"]):
        with pytest.raises(ConfigError, match="--engine-pid"):
            parse_engine_pids(bad)


def test_probe_command_fake_json(capsys: pytest.CaptureFixture[str]) -> None:
    me = os.getpid()
    code = cli.main(["probe", "--backend", "fake", "--json", "--engine-pid", f"me={me}"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    gpu0 = doc["gpus"][0]
    owners = {p["pid"]: p["owner"] for p in gpu0["processes"]}
    assert owners == {me: "me", FAKE_COTENANT_PID: "foreign"}
    assert gpu0["engine_resident_bytes"] == {"me": 20 * 1024**3}
    assert doc["backend"] == "fake"


def test_probe_command_says_when_an_engine_root_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_proc(tmp_path / "proc", [(1, 0, "init")])
    argv = ["probe", "--backend", "fake", "--engine-pid", "gone=4321", "--proc-root", str(root)]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "engine gone: pid 4321 is not running" in captured.err
    assert "engine gone: resident unknown" in captured.out


def test_probe_command_gpus_and_watch(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["probe", "--backend", "fake", "--gpus", "GPU-fake0001", "--watch", "0.01", "--count", "2"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("backend fake") == 2
    assert "gpu1" in out and "gpu0" not in out


def test_probe_command_smi_table(
    smi_dir: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PATH", smi_env(smi_dir)["PATH"])
    code = cli.main(["probe", "--backend", "smi", "--gpus", "0000:18:00.0"])
    assert code == 0
    out = capsys.readouterr().out
    assert "gpu0" in out and "32.01 GiB" in out and "4242" in out and "foreign" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["probe", "--backend", "fake", "--gpus", "9"], "index 9 does not exist"),
        (["probe", "--backend", "fake", "--engine-pid", "x"], "--engine-pid"),
        (["probe", "--backend", "fake", "--watch", "0"], "--watch"),
    ],
)
def test_probe_command_errors_name_the_input(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_doctor_exits_zero_here(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "NVML:" in out and "PID namespace" in out and "=> " in out
    assert cli.main(["doctor", "--json"]) == 0
    assert "verdict" in json.loads(capsys.readouterr().out)


async def test_doctor_without_any_gpu_says_so(tmp_path: Path) -> None:
    found = await diagnose(
        nvml_module=FakeNvml([], init_error=NO_LIB()),
        environ={"PATH": str(tmp_path)},
        proc_root=str(make_proc(tmp_path / "proc", [])),
    )
    assert found["gpus"] == 0
    assert "no NVIDIA GPU is usable" in found["verdict"][0]
    assert "Library Not Found" in render(found)


async def test_doctor_with_gpus_maps_visible_devices(tmp_path: Path) -> None:
    gpus = h200s(3)
    gpus[2].mig = (1, 1)
    found = await diagnose(
        nvml_module=FakeNvml(gpus),
        environ={"PATH": str(tmp_path), "CUDA_VISIBLE_DEVICES": "2,0"},
        proc_root=str(make_proc(tmp_path / "proc", [], namespace="pid:[4026532001]")),
    )
    assert found["nvml"]["driver_version"] == "580.159.04"
    assert [(m["cuda"], m["index"]) for m in found["cuda"]["mapping"]] == [(0, 2), (1, 0)]
    verdict = " ".join(found["verdict"])
    assert "NVML" in verdict and "foreign" in verdict and "MIG" in verdict
    text = render(found)
    assert "CUDA device 0 -> gpu2" in text and "MIG on" in text


async def test_doctor_reports_an_unsafe_visible_mapping(tmp_path: Path) -> None:
    gpus = h200s(2)
    gpus[1].name = "NVIDIA A100-SXM4-80GB"
    found = await diagnose(
        nvml_module=FakeNvml(gpus),
        environ={"PATH": str(tmp_path), "CUDA_VISIBLE_DEVICES": "1"},
        proc_root=str(make_proc(tmp_path / "proc", [])),
    )
    assert "FASTEST_FIRST" in found["cuda"]["error"]
    assert any("cannot be mapped safely" in v for v in found["verdict"])
