"""nvidia-smi backend: recorded CSV (odd rows included) and a fake executable on PATH."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import anyio
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
from offload_fsm.probe.attribution import resident_by_gpu
from offload_fsm.probe.base import MIB, GpuDevice
from offload_fsm.probe.smi import GPU_FIELDS, SmiBackend, parse_app_rows, parse_gpu_rows
from tests.probe.fake_nvml import wait_until

# Recorded from nvidia-smi 580 (two H200s), plus the odd rows seen in the wild.
_UUID = "-1111-2222-3333-444455556666"
GPU_CSV = "\n".join(
    [
        f"0, GPU-8f0b1c2d{_UUID}, 00000000:18:00.0, NVIDIA H200, 143771, 613, 32782, 110376",
        f"1, GPU-9a0b1c2d{_UUID}, 00000000:2A:00.0, NVIDIA H200, 143771, 613, 0, 143158",
        "",
        f"2, GPU-deadbeef{_UUID}, [N/A], NVIDIA H200, 143771, 613, 0, 143158",
        "garbage line",
        f"3, GPU-feedface{_UUID}, 00000000:3C:00.0, NVIDIA H200, [N/A], 613, "
        "[Insufficient Permissions], 1",
        "",
    ]
)
APPS_CSV = """\
00000000:18:00.0, 4242, 32168
00000000:18:00.0, 4243, [N/A]
00000000:18:00.0, [Insufficient Permissions], 100
00000000:2A:00.0, 777, 12abc

[N/A], 778, 5
00000000:2A:00.0, 779, [Insufficient Permissions]
"""
LEGACY_CSV = """\
4242, 32168
4242, 1000
4243, 10
4244, [N/A]
4244, 10
"""


def test_parse_gpu_rows_skips_unreadable_rows() -> None:
    rows, skipped = parse_gpu_rows(GPU_CSV)
    assert [r.index for r in rows] == [0, 1, 3]
    assert skipped == 2  # [N/A] bus id, garbage (the blank line is not a row)
    r0 = rows[0]
    assert (r0.uuid, r0.bus_id, r0.name) == (
        "GPU-8f0b1c2d-1111-2222-3333-444455556666",
        "00000000:18:00.0",
        "NVIDIA H200",
    )
    assert (r0.total_bytes, r0.reserved_bytes, r0.used_bytes, r0.free_bytes) == (
        143771 * MIB,
        613 * MIB,
        32782 * MIB,
        110376 * MIB,
    )
    assert (rows[2].total_bytes, rows[2].used_bytes) == (None, None)  # unknown, never 0


def test_parse_app_rows() -> None:
    rows, skipped = parse_app_rows(APPS_CSV)
    assert [(r.bus_id, r.pid, r.used_bytes) for r in rows] == [
        ("00000000:18:00.0", 4242, 32168 * MIB),
        ("00000000:18:00.0", 4243, None),
        ("00000000:2A:00.0", 779, None),
    ]
    assert skipped == 3  # no pid, garbage usage, no bus id
    legacy, skipped = parse_app_rows(LEGACY_CSV, legacy=True)
    assert len(legacy) == 5 and skipped == 0
    assert parse_app_rows("No running processes found\n") == ([], 0)
    assert parse_gpu_rows("0, GPU-x, 00000000:18:00.0, n, -5, 1, 1, 1\n", GPU_FIELDS)[1] == 1


FAKE_SMI = r"""#!/bin/sh
dir="$(dirname "$0")"
echo "$*" >> "$dir/calls.log"
if [ -f "$dir/sleep" ]; then echo $$ > "$dir/pid"; exec sleep 30; fi
if [ -f "$dir/fail" ]; then cat "$dir/fail" >&2; exit 9; fi
case "$*" in
  *--query-gpu=*memory.reserved*)
    if [ -f "$dir/no_reserved" ]; then
      echo 'Field "memory.reserved" is not a valid field to query.'; exit 2
    fi
    cat "$dir/gpu.csv";;
  *--query-gpu=*) cut -d, -f1-5,7- "$dir/gpu.csv";;
  *--query-compute-apps=gpu_bus_id*)
    if [ -f "$dir/legacy" ]; then
      echo 'Field "gpu_bus_id" is not a valid field to query.'; exit 2
    fi
    cat "$dir/apps.csv";;
  *--query-compute-apps=pid*) cat "$dir/legacy.csv";;
  *) echo "unexpected: $*" >&2; exit 3;;
esac
"""


@pytest.fixture
def smi_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    exe = d / "nvidia-smi"
    exe.write_text(FAKE_SMI)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    (d / "gpu.csv").write_text(GPU_CSV)
    (d / "apps.csv").write_text(APPS_CSV)
    (d / "legacy.csv").write_text(LEGACY_CSV)
    return d


def backend(smi_dir: Path, **kwargs: float) -> SmiBackend:
    return SmiBackend(env={"PATH": f"{smi_dir}:/usr/bin:/bin"}, **kwargs)


def calls(smi_dir: Path) -> list[str]:
    return (smi_dir / "calls.log").read_text().splitlines()


async def test_devices_and_round_through_the_executable(smi_dir: Path) -> None:
    smi = backend(smi_dir)
    devices = await smi.devices()
    assert [d.index for d in devices] == [0, 1, 3]
    rnd = await smi.probe(devices[:2])
    m0 = rnd.memory_of(devices[0])
    assert (m0.used_bytes, m0.reserved_bytes, m0.semantics) == (32782 * MIB, 613 * MIB, "smi")
    assert [(p.pid, p.used_bytes) for p in rnd.processes_on(devices[0])] == [
        (4242, 32168 * MIB),
        (4243, None),
    ]
    assert [(p.pid, p.used_bytes) for p in rnd.processes_on(devices[1])] == [(779, None)]
    assert resident_by_gpu(rnd, {4242}) == {devices[0].key: 32168 * MIB, devices[1].key: None}
    assert any("skipped 3" in n for n in rnd.notes)
    assert any("skipped 2" in n for n in rnd.notes)
    assert rnd.per_gpu_processes
    assert all("--format=csv,noheader,nounits" in c for c in calls(smi_dir))
    await smi.aclose()


async def test_a_device_without_a_readable_row_is_unknown(smi_dir: Path) -> None:
    smi = backend(smi_dir)
    ghost = GpuDevice(2, "GPU-deadbeef-1111-2222-3333-444455556666", "00000000:99:00.0")
    rnd = await smi.probe([ghost])
    assert rnd.memory[0].used_bytes is None
    assert any("gpu2" in n for n in rnd.notes)


async def test_without_memory_reserved_the_reserve_is_unknown(smi_dir: Path) -> None:
    (smi_dir / "no_reserved").touch()
    smi = backend(smi_dir)
    devices = await smi.devices()
    rnd = await smi.probe(devices[:1])
    assert rnd.memory[0].reserved_bytes is None
    assert rnd.memory[0].used_bytes == 32782 * MIB  # the column shift was handled
    gpu_calls = [c for c in calls(smi_dir) if "--query-gpu" in c]
    assert sum("memory.reserved" in c for c in gpu_calls) == 1  # not asked again


async def test_legacy_process_query_is_summed_and_flagged(smi_dir: Path) -> None:
    (smi_dir / "legacy").touch()
    smi = backend(smi_dir)
    devices = await smi.devices()
    rnd = await smi.probe(devices)
    assert not rnd.per_gpu_processes
    assert rnd.processes == ()
    assert [(u.pid, u.used_bytes) for u in rnd.unplaced] == [
        (4242, 33168 * MIB),
        (4243, 10 * MIB),
        (4244, None),
    ]
    assert resident_by_gpu(rnd, {4242}) == {d.key: None for d in devices}
    assert any("legacy" in n for n in rnd.notes)


async def test_missing_binary_is_backend_unavailable(tmp_path: Path) -> None:
    smi = SmiBackend(env={"PATH": str(tmp_path)})
    with pytest.raises(BackendUnavailable, match="not found on PATH"):
        await smi.devices()


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
            BackendUnavailable,
        ),
        (
            "Unable to determine the device handle for GPU0000:18:00.0: GPU is lost.",
            DeviceUnhealthy,
        ),
        ("Something odd happened", TransientProbeError),
    ],
)
async def test_failures_are_mapped(smi_dir: Path, message: str, error: type[Exception]) -> None:
    (smi_dir / "fail").write_text(message + "\n")
    smi = backend(smi_dir)
    with pytest.raises(error, match="exit status 9"):
        await smi.probe([GpuDevice(0, "GPU-8f0b1c2d-1111-2222-3333-444455556666", "18:00.0")])


async def test_a_hung_call_is_killed_at_its_timeout(smi_dir: Path) -> None:
    (smi_dir / "sleep").touch()
    smi = backend(smi_dir, timeout_s=0.3)
    start = time.monotonic()
    with pytest.raises(ProbeTimeout, match=r"within 0.3 s"):
        await smi.devices()
    assert time.monotonic() - start < 5.0
    pid = int((smi_dir / "pid").read_text())

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    assert await anyio.to_thread.run_sync(wait_until, gone)


def test_bad_timeout_is_refused() -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        SmiBackend(timeout_s=0)


@given(st.text(alphabet=st.sampled_from("0123456789¹,:.-[]/ NAGPU\n"), max_size=200))
def test_parsers_never_crash(text: str) -> None:
    rows, skipped = parse_gpu_rows(text)
    assert len(rows) + skipped == sum(1 for line in text.splitlines() if line.strip())
    assert all(r.bus_id.startswith("0000") for r in rows)
    apps, _ = parse_app_rows(text)
    legacy, _ = parse_app_rows(text, legacy=True)
    assert all(a.pid >= 0 for a in apps + legacy)
