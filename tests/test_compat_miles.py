"""offload_fsm.compat.miles as a drop-in for rlops/miles ``miles/utils/gpu_probe.py``
(ac0750567b11): every case of upstream ``tests/test_gpu_probe.py`` in our words and fixtures,
then the query's None rules and fallbacks against a stand-in nvidia-smi."""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from offload_fsm.compat import miles
from offload_fsm.compat.miles import (
    build_process_tree,
    parse_compute_apps_per_gpu_max_gb,
    parse_compute_apps_used_gb,
    query_process_tree_gpu_used_gb,
)
from offload_fsm.core.errors import ConfigError
from tests.fake_smi import FakeSmi

AWARE = miles.GPU_AWARE_QUERY
LEGACY = miles.LEGACY_QUERY
GPU_A = "00000000:3B:00.0"
GPU_B = "00000000:5E:00.0"


def gib(mib: float) -> float:
    return mib / 1024.0


# --- the GPU-aware parser: summed within a GPU, max across GPUs ---------------------------


def test_per_gpu_answer_is_the_largest_gpu_not_the_sum_across_gpus() -> None:
    out = f"{GPU_A}, 41, 300\n{GPU_A}, 42, 700\n{GPU_B}, 41, 1536\n"
    # GPU A holds 300 + 700 = 1000 MiB of the tree, GPU B 1536 MiB: a TP=2 engine is judged
    # by its worst card, never by 2536 MiB.
    assert parse_compute_apps_per_gpu_max_gb(out, {41, 42}) == pytest.approx(gib(1536))


def test_per_gpu_rows_of_one_gpu_are_summed() -> None:
    out = f"{GPU_A},41,300\n{GPU_A},42,212"
    assert parse_compute_apps_per_gpu_max_gb(out, {41, 42}) == pytest.approx(gib(512))


def test_per_gpu_ignores_processes_outside_the_tree() -> None:
    out = f"{GPU_A},41,300\n{GPU_B},77,60000"
    assert parse_compute_apps_per_gpu_max_gb(out, {41}) == pytest.approx(gib(300))


def test_per_gpu_without_a_tree_row_is_unknown_not_zero() -> None:
    assert parse_compute_apps_per_gpu_max_gb(f"{GPU_B},77,60000", {41, 42}) is None
    assert parse_compute_apps_per_gpu_max_gb("", {41}) is None


def test_per_gpu_skips_an_na_row_instead_of_giving_up() -> None:
    out = f"{GPU_A}, 41, [N/A]\n{GPU_B}, 42, 2048\ngarbage\n"
    assert parse_compute_apps_per_gpu_max_gb(out, {41, 42}) == pytest.approx(2.0)
    assert parse_compute_apps_per_gpu_max_gb(f"{GPU_A}, 41, [N/A]", {41}) is None


# --- the legacy two-column parser: summed over everything ---------------------------------


def test_legacy_sums_the_tree_rows_only() -> None:
    out = "41, 300\n42, 724\n77, 9000"
    assert parse_compute_apps_used_gb(out, {41, 42}) == pytest.approx(1.0)


def test_legacy_without_a_tree_row_is_unknown_not_zero() -> None:
    assert parse_compute_apps_used_gb("77, 9000\n78, 100", {41, 42}) is None


def test_legacy_skips_rows_it_cannot_read() -> None:
    out = "41, [N/A]\n41, 1000\nnot a row\n, \n42,24"
    assert parse_compute_apps_used_gb(out, {41, 42}) == pytest.approx(gib(1024))


# --- the process tree -----------------------------------------------------------------------


def write_stat(proc: Path, pid: int, comm: str, ppid: int) -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) S {ppid} 1 1 0 -1\n")


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """An engine: the spawn parent 41, its scheduler 42 and detokenizer 43, and a stranger."""
    root = tmp_path / "proc"
    write_stat(root, 41, "python3", 1)
    write_stat(root, 42, "sglang::scheduler", 41)
    write_stat(root, 43, "sglang::detokenizer", 42)
    write_stat(root, 77, "other", 1)
    return root


def test_tree_holds_the_root_and_all_descendants(proc: Path) -> None:
    assert build_process_tree(41, proc_root=str(proc)) == {41, 42, 43}
    assert build_process_tree(42, str(proc)) == {42, 43}


def test_tree_reads_a_comm_with_spaces_and_parentheses(proc: Path) -> None:
    (proc / "50").mkdir()
    (proc / "50" / "stat").write_text("50 (a) b (c d)) S 43 0\n")
    assert build_process_tree(41, proc_root=str(proc)) == {41, 42, 43, 50}


def test_tree_without_a_readable_proc_is_the_root_alone(tmp_path: Path) -> None:
    assert build_process_tree(41, proc_root=str(tmp_path / "no-proc")) == {41}


def test_tree_of_a_gone_root_still_holds_the_root_and_its_children(proc: Path) -> None:
    write_stat(proc, 60, "left-behind", 99)
    assert build_process_tree(99, proc_root=str(proc)) == {99, 60}


# --- the query: nvidia-smi, its fallbacks and its None rules ---------------------------------


def query(proc: Path, root: int | None = 41, **kw: object) -> float | None:
    return query_process_tree_gpu_used_gb(root, proc_root=str(proc), **kw)  # type: ignore[arg-type]


def test_query_keeps_the_upstream_signature() -> None:
    params = inspect.signature(query_process_tree_gpu_used_gb).parameters
    assert list(params)[:3] == ["root_pid", "timeout_s", "proc_root"]
    assert params["timeout_s"].default == 5.0 and params["proc_root"].default == "/proc"
    assert params["pid_namespace"].kind is inspect.Parameter.KEYWORD_ONLY


def test_query_measures_the_tree_per_gpu(proc: Path, smi: FakeSmi) -> None:
    smi.answer(AWARE, f"{GPU_A}, 42, 1024\n{GPU_A}, 43, 512\n{GPU_B}, 42, 1024\n{GPU_B}, 77, 9000")
    assert query(proc) == pytest.approx(1.5)
    assert smi.calls() == [[AWARE, "--format=csv,noheader,nounits"]]


def test_query_of_no_pid_is_unknown_without_asking(proc: Path, smi: FakeSmi) -> None:
    engine = SimpleNamespace(process=None)  # MILES: getattr(self.process, "pid", None)
    assert query(proc, getattr(engine.process, "pid", None)) is None
    assert smi.calls() == []


@pytest.mark.usefixtures("no_smi")
def test_query_without_nvidia_smi_is_unknown(proc: Path) -> None:
    assert query(proc) is None


def test_query_falls_back_to_the_legacy_query_and_says_so(
    proc: Path, smi: FakeSmi, caplog: pytest.LogCaptureFixture
) -> None:
    smi.answer(AWARE, rc=2, err='Field "gpu_bus_id" is not a valid field to query.')
    smi.answer(LEGACY, "42, 1024\n43, 1024\n77, 9000\n")
    with caplog.at_level(logging.WARNING, logger="offload_fsm.compat.miles"):
        assert query(proc) == pytest.approx(2.0)  # summed over GPUs: an upper bound
    assert "legacy" in caplog.text
    assert [c[0] for c in smi.calls()] == [AWARE, LEGACY]


def test_query_is_unknown_when_both_queries_fail(proc: Path, smi: FakeSmi) -> None:
    smi.answer(AWARE, rc=9, err="Failed to initialize NVML: Driver/library version mismatch")
    smi.answer(LEGACY, rc=9, err="Failed to initialize NVML: Driver/library version mismatch")
    assert query(proc) is None


def test_query_honours_its_timeout(proc: Path, smi: FakeSmi) -> None:
    smi.answer(AWARE, f"{GPU_A}, 42, 1024", sleep=5)
    smi.answer(LEGACY, "42, 3072")
    t0 = time.monotonic()
    assert query(proc, timeout_s=0.5) == pytest.approx(3.0)  # the hung query was given up
    assert time.monotonic() - t0 < 4
    smi.answer(LEGACY, "42, 3072", sleep=5)
    t0 = time.monotonic()
    assert query(proc, timeout_s=0.5) is None
    assert time.monotonic() - t0 < 4


def test_query_with_no_tree_row_is_unknown(proc: Path, smi: FakeSmi) -> None:
    smi.answer(AWARE, f"{GPU_A}, 77, 9000")
    assert query(proc) is None
    smi.answer(AWARE, "No running processes found\n")
    assert query(proc) is None


def test_query_without_proc_measures_the_root_alone(tmp_path: Path, smi: FakeSmi) -> None:
    smi.answer(AWARE, f"{GPU_A}, 41, 2048\n{GPU_A}, 42, 4096")
    assert query(tmp_path / "no-proc") == pytest.approx(2.0)


def test_query_in_a_foreign_pid_namespace_is_unknown_unless_told(proc: Path, smi: FakeSmi) -> None:
    smi.answer(AWARE, f"{GPU_A}, 42, 1024")
    assert query(proc, pid_namespace="foreign") is None  # pid 42 out there is a stranger
    assert query(proc, pid_namespace="host") == pytest.approx(1.0)
    assert smi.calls() == [[AWARE, "--format=csv,noheader,nounits"]]


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"root": 0}, "root_pid"),
        ({"root": -5}, "root_pid"),
        ({"root": "41"}, "root_pid"),
        ({"root": True}, "root_pid"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"pid_namespace": "mine"}, "pid_namespace"),
    ],
)
def test_bad_input_is_refused_by_name(
    proc: Path, smi: FakeSmi, kw: dict[str, object], name: str
) -> None:
    with pytest.raises(ConfigError) as info:
        query(proc, **kw)
    assert info.value.name == name
    assert smi.calls() == []


def test_earlier_helpers_are_still_exported() -> None:
    from offload_fsm.compat import gates

    for name in ("wait_for_residual", "max_used_gib", "kill_tree_and_verify"):
        assert getattr(miles, name) is getattr(gates, name)
