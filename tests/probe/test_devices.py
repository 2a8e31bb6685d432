"""Device id resolution: indices, UUID prefixes, bus ids, CUDA_VISIBLE_DEVICES ordinals."""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload_fsm.core.errors import DeviceIdError
from offload_fsm.probe.base import GpuDevice
from offload_fsm.probe.devices import (
    canonical_bus_id,
    cuda_visible_order,
    resolve_device,
    resolve_devices,
    split_ids,
)

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"


def machine(names: list[str]) -> tuple[GpuDevice, ...]:
    return tuple(
        GpuDevice(
            index=i,
            uuid=f"GPU-{0xA0 + i:02x}{i}f0b1c-1111-2222-3333-{i:012x}",
            bus_id=f"00000000:{0x1B + 0x20 * i:02X}:00.0",
            name=name,
        )
        for i, name in enumerate(names)
    )


FOUR = machine([H100] * 4)
MIXED = machine([H100, A100, H100])


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("00000000:3B:00.0", "00000000:3B:00.0"),
        ("0000:3b:00.0", "00000000:3B:00.0"),
        ("3b:00.0", "00000000:3B:00.0"),
        (" 0001:5:1f.7 ", "00000001:05:1F.7"),
        ("3b:00", None),
        ("3b:00.8", None),
        ("GPU-3b", None),
    ],
)
def test_bus_id_forms(text: str, canonical: str | None) -> None:
    assert canonical_bus_id(text) == canonical


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 0x1F), st.integers(0, 7))
def test_bus_id_canonical_form_is_a_fixed_point(dom: int, bus: int, dev: int, fn: int) -> None:
    once = canonical_bus_id(f"{dom:x}:{bus:x}:{dev:x}.{fn}")
    assert once is not None
    assert canonical_bus_id(once) == once
    assert canonical_bus_id(once.lower()) == once


def test_physical_index_uuid_prefix_and_bus_id() -> None:
    dev2 = FOUR[2]
    assert resolve_device(2, FOUR) is dev2
    assert resolve_device("2", FOUR) is dev2
    assert resolve_device(dev2.uuid, FOUR) is dev2
    assert resolve_device(dev2.uuid.lower(), FOUR) is dev2
    assert resolve_device(dev2.uuid[4:], FOUR) is dev2  # bare uuid
    assert resolve_device("GPU-a22", FOUR) is dev2  # unique prefix
    assert resolve_device("a22f", FOUR) is dev2  # bare prefix with a hex letter
    assert resolve_device("0000:5b:00.0", FOUR) is dev2
    assert resolve_device("5B:00.0", FOUR) is dev2


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (9, "index 9 does not exist"),
        ("GPU-a", "ambiguous"),
        ("GPU-ffff", "no GPU UUID starts with"),
        ("GPU-", "empty UUID"),
        ("00:01.0", "no GPU has PCI bus id"),
        ("gpu0", "not an index"),
        ("-1", "not an index"),
    ],
)
def test_bad_ids_are_refused_naming_the_input(ref: str | int, message: str) -> None:
    with pytest.raises(DeviceIdError, match=message) as info:
        resolve_device(ref, FOUR)
    assert str(ref) in str(info.value)


def test_lists_and_duplicates() -> None:
    assert resolve_devices("0, 3b:00.0 ,GPU-a33", FOUR) == (FOUR[0], FOUR[1], FOUR[3])
    with pytest.raises(DeviceIdError, match="name the same GPU"):
        resolve_devices("0,0000:1b:00.0", FOUR)
    assert resolve_devices("1,GPU-a33", FOUR) == (FOUR[1], FOUR[3])
    assert resolve_devices([3, "0"], FOUR) == (FOUR[3], FOUR[0])
    with pytest.raises(DeviceIdError, match="empty item"):
        split_ids("0,,1")
    with pytest.raises(DeviceIdError, match="no GPU ids"):
        resolve_devices([], FOUR)


def test_cuda_visible_ordinals_follow_the_listed_order() -> None:
    assert resolve_devices("0,1", FOUR, cuda_visible_devices="2,0") == (FOUR[2], FOUR[0])
    assert resolve_devices("1", FOUR, cuda_visible_devices=f"3,{FOUR[1].uuid[:8]}") == (FOUR[1],)
    # uuids and bus ids stay physical in relative mode
    assert resolve_devices("GPU-a33", FOUR, cuda_visible_devices="2") == (FOUR[3],)
    # unset variable: every GPU, CUDA order
    assert resolve_devices("3", FOUR, relative=True) == (FOUR[3],)
    with pytest.raises(DeviceIdError, match="CUDA device 2 does not exist"):
        resolve_devices("2", FOUR, cuda_visible_devices="2,0")


@pytest.mark.parametrize("hide_all", ["", "-1", "NoDevFiles", " "])
def test_visible_devices_that_hide_everything(hide_all: str) -> None:
    assert cuda_visible_order(hide_all, FOUR) == ()
    with pytest.raises(DeviceIdError, match="0 visible"):
        resolve_devices("0", FOUR, cuda_visible_devices=hide_all)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0,7", "out of range"),
        ("0,0", "again"),
        ("1,GPU-a11", "again"),
        ("0,foo", "neither an ordinal nor a GPU UUID"),
        ("MIG-1234", "MIG"),
        ("GPU-zz", "no GPU UUID starts with"),
        ("GPU-z!", "neither"),
        ("0,,1", "empty item"),
        ("GPU-a", "ambiguous"),
    ],
)
def test_bad_visible_devices_are_refused(value: str, message: str) -> None:
    with pytest.raises(DeviceIdError, match=message):
        cuda_visible_order(value, FOUR)


def test_fastest_first_on_mixed_models_is_refused() -> None:
    with pytest.raises(DeviceIdError, match="FASTEST_FIRST"):
        resolve_devices("0", MIXED, cuda_visible_devices="1,2")
    with pytest.raises(DeviceIdError, match="FASTEST_FIRST"):
        resolve_devices("0", MIXED, relative=True)
    # PCI_BUS_ID order, or UUIDs in the variable, make the mapping well defined
    assert resolve_devices(
        "0", MIXED, cuda_visible_devices="1,2", cuda_device_order="PCI_BUS_ID"
    ) == (MIXED[1],)
    assert resolve_devices("1", MIXED, cuda_visible_devices=f"{MIXED[2].uuid},{MIXED[1].uuid}") == (
        MIXED[1],
    )
    # physical indices never depend on CUDA's order
    assert resolve_devices("1", MIXED) == (MIXED[1],)
    with pytest.raises(DeviceIdError, match="CUDA_DEVICE_ORDER"):
        cuda_visible_order("0", FOUR, cuda_device_order="SLOWEST_FIRST")


def test_enumeration_is_pci_order_not_list_order() -> None:
    shuffled = (FOUR[2], FOUR[0], FOUR[3], FOUR[1])
    assert cuda_visible_order(None, shuffled) == FOUR
    assert cuda_visible_order("1", shuffled) == (FOUR[1],)


def test_probe_modules_never_import_a_cuda_runtime() -> None:
    banned = {"torch", "cupy", "pycuda", "numba", "cuda", "jax", "tensorflow"}
    probe_dir = Path(__file__).resolve().parents[2] / "offload_fsm" / "probe"
    for path in probe_dir.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"


@given(st.text(max_size=40))
def test_resolution_of_any_text_is_a_device_or_a_device_id_error(text: str) -> None:
    for call in (
        lambda: resolve_device(text, FOUR),
        lambda: resolve_devices(text, FOUR),
        lambda: resolve_devices(text, MIXED, relative=True, cuda_device_order="PCI_BUS_ID"),
        lambda: cuda_visible_order(text, FOUR),
    ):
        with contextlib.suppress(DeviceIdError):
            call()


def test_unicode_digits_are_not_indices() -> None:
    with pytest.raises(DeviceIdError, match="not an index"):
        resolve_device("¹", FOUR)
    with pytest.raises(DeviceIdError):
        cuda_visible_order("²", FOUR)
