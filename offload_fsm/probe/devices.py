"""Device identity: every way a user names a GPU, resolved to one canonical :class:`GpuDevice`.

Accepted forms (case-insensitive where hex):

- a physical NVML index (``3``): NVML numbers GPUs in PCI bus order;
- a UUID (``GPU-8f0b...``), or a unique prefix of one, with or without ``GPU-`` (a prefix
  made only of digits needs the ``GPU-`` to be told from an index);
- a PCI bus id: ``00000000:3B:00.0``, ``0000:3b:00.0`` or ``3b:00.0``;
- with a ``CUDA_VISIBLE_DEVICES`` string: integers are CUDA ordinals *inside* that process.

CUDA numbers devices FASTEST_FIRST unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``. On identical GPUs
FASTEST_FIRST ties fall back to PCI order, so both orders agree; on mixed models they may not,
and a mapping that depends on it is refused. Nothing here initialises CUDA: the device list
comes from a probe backend (NVML / nvidia-smi), never from a CUDA runtime.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from offload_fsm.core.errors import DeviceIdError
from offload_fsm.probe.base import GpuDevice

CUDA_DEVICE_ORDERS = ("FASTEST_FIRST", "PCI_BUS_ID")
_BUS_ID = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):"
    r"(?P<dev>[0-9a-fA-F]{1,2})\.(?P<fn>[0-7])$"
)
_UUID_BODY = re.compile(r"^[0-9a-fA-F-]*$")
_PREFIXED_BODY = re.compile(r"^[0-9A-Za-z-]*$")  # after "GPU-" (simulated GPUs are not hex)
# CUDA_VISIBLE_DEVICES values that hide every GPU.
_HIDE_ALL = ("", "-1", "NoDevFiles")


def is_decimal(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts "¹", which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def canonical_bus_id(text: str) -> str | None:
    """``00000000:3B:00.0`` (NVML's and nvidia-smi's form) for any bus-id form, else None."""
    m = _BUS_ID.match(text.strip())
    if m is None:
        return None
    domain = int(m["domain"] or "0", 16)
    return f"{domain:08X}:{int(m['bus'], 16):02X}:{int(m['dev'], 16):02X}.{m['fn']}"


def split_ids(text: str) -> tuple[str, ...]:
    """``"0, 1,GPU-ab"`` -> ``("0", "1", "GPU-ab")``; an empty item is an error."""
    items = tuple(part.strip() for part in text.split(","))
    if any(not item for item in items):
        raise DeviceIdError(f"GPU id list {text!r} has an empty item")
    return items


def _uuid_key(text: str) -> str:
    body = text[4:] if text[:4].upper() == "GPU-" else text
    return body.lower()


def _is_uuid_form(text: str) -> bool:
    if text[:4].upper() == "GPU-":
        return bool(_PREFIXED_BODY.match(text[4:]))
    # A bare prefix: hex digits and dashes, not only digits (that is an index).
    return (
        bool(text and _UUID_BODY.match(text)) and not is_decimal(text) and not text.startswith("-")
    )


def _describe(devices: Sequence[GpuDevice]) -> str:
    if not devices:
        return "no GPUs are visible"
    return "have " + ", ".join(f"{d.index}={d.uuid} ({d.bus_id})" for d in devices)


def resolve_device(ref: str | int, devices: Sequence[GpuDevice]) -> GpuDevice:
    """One physical GPU named by index, UUID (prefix) or PCI bus id among ``devices``."""
    text = str(ref).strip()
    if isinstance(ref, int) or is_decimal(text):
        index = int(text)
        for dev in devices:
            if dev.index == index:
                return dev
        raise DeviceIdError(f"GPU index {text} does not exist: {_describe(devices)}")
    bus = canonical_bus_id(text)
    if bus is not None:
        for dev in devices:
            if canonical_bus_id(dev.bus_id) == bus:
                return dev
        raise DeviceIdError(f"no GPU has PCI bus id {text!r}: {_describe(devices)}")
    if _is_uuid_form(text):
        want = _uuid_key(text)
        if not want:
            raise DeviceIdError(f"GPU id {text!r} is an empty UUID")
        matches = [d for d in devices if _uuid_key(d.uuid).startswith(want)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise DeviceIdError(f"no GPU UUID starts with {text!r}: {_describe(devices)}")
        raise DeviceIdError(
            f"GPU UUID prefix {text!r} is ambiguous: it matches "
            + ", ".join(d.uuid for d in matches)
        )
    raise DeviceIdError(
        f"GPU id {text!r} is not an index, a UUID (GPU-...) or a PCI bus id (0000:3b:00.0)"
    )


def _pci_order(devices: Sequence[GpuDevice]) -> list[GpuDevice]:
    return sorted(devices, key=lambda d: canonical_bus_id(d.bus_id) or d.bus_id)


def _mixed_models(devices: Sequence[GpuDevice]) -> bool:
    names = {d.name for d in devices}
    return len(names) > 1 or "" in names


def cuda_visible_order(
    cuda_visible_devices: str | None,
    devices: Sequence[GpuDevice],
    *,
    cuda_device_order: str | None = None,
) -> tuple[GpuDevice, ...]:
    """The GPUs a CUDA process sees under these env values, in CUDA ordinal order.

    ``cuda_visible_devices`` None means the variable is unset (every GPU). Refuses entries
    CUDA would silently drop (unknown, duplicated, malformed, MIG instances) and integer
    entries whose meaning depends on FASTEST_FIRST ordering of mixed GPU models.
    """
    order = (cuda_device_order or "FASTEST_FIRST").strip()
    if order not in CUDA_DEVICE_ORDERS:
        raise DeviceIdError(
            f"CUDA_DEVICE_ORDER={cuda_device_order!r} is invalid: expected one of "
            f"{', '.join(CUDA_DEVICE_ORDERS)}"
        )
    enumeration = _pci_order(devices)
    ambiguous_order = order == "FASTEST_FIRST" and len(devices) > 1 and _mixed_models(devices)
    if cuda_visible_devices is None:
        if ambiguous_order:
            raise DeviceIdError(
                "with CUDA_VISIBLE_DEVICES unset, CUDA numbers mixed GPU models ("
                + ", ".join(sorted({d.name or "?" for d in devices}))
                + ") FASTEST_FIRST: set CUDA_DEVICE_ORDER=PCI_BUS_ID or name GPUs by UUID"
            )
        return tuple(enumeration)
    text = cuda_visible_devices.strip()
    if text in _HIDE_ALL:
        return ()
    seen: dict[str, str] = {}
    visible: list[GpuDevice] = []
    for entry in split_ids(text):
        label = f"CUDA_VISIBLE_DEVICES={cuda_visible_devices!r}: entry {entry!r}"
        if entry.upper().startswith("MIG-"):
            raise DeviceIdError(f"{label} is a MIG instance; MIG devices are not supported")
        if is_decimal(entry.lstrip("-")):
            ordinal = int(entry)
            if ordinal < 0 or ordinal >= len(enumeration):
                raise DeviceIdError(f"{label} is out of range ({len(enumeration)} GPUs)")
            if ambiguous_order:
                raise DeviceIdError(
                    f"{label} depends on CUDA's FASTEST_FIRST order of mixed GPU models; "
                    "set CUDA_DEVICE_ORDER=PCI_BUS_ID or list UUIDs"
                )
            dev = enumeration[ordinal]
        elif _is_uuid_form(entry):
            try:
                dev = resolve_device(entry, devices)
            except DeviceIdError as exc:
                raise DeviceIdError(f"{label}: {exc}") from None
        else:
            raise DeviceIdError(f"{label} is neither an ordinal nor a GPU UUID")
        if dev.key in seen:
            raise DeviceIdError(f"{label} names {dev.uuid} again (as {seen[dev.key]!r})")
        seen[dev.key] = entry
        visible.append(dev)
    return tuple(visible)


def resolve_devices(
    refs: str | Iterable[str | int],
    devices: Sequence[GpuDevice],
    *,
    cuda_visible_devices: str | None = None,
    relative: bool = False,
    cuda_device_order: str | None = None,
) -> tuple[GpuDevice, ...]:
    """Resolve a list of GPU ids (``"0,GPU-ab,3b:00.0"`` or a sequence) to canonical devices.

    Integers are physical NVML indices, unless ``relative`` is true or a
    ``cuda_visible_devices`` string is given: then they are CUDA ordinals under that value
    (None with ``relative``: the variable is unset). Duplicates are refused.
    """
    items: tuple[str | int, ...] = split_ids(refs) if isinstance(refs, str) else tuple(refs)
    if not items:
        raise DeviceIdError("no GPU ids were given")
    relative = relative or cuda_visible_devices is not None
    visible: tuple[GpuDevice, ...] | None = None
    out: list[GpuDevice] = []
    named: dict[str, str | int] = {}
    for ref in items:
        text = str(ref).strip()
        if relative and (isinstance(ref, int) or is_decimal(text)):
            if visible is None:
                visible = cuda_visible_order(
                    cuda_visible_devices, devices, cuda_device_order=cuda_device_order
                )
            ordinal = int(text)
            if ordinal >= len(visible):
                raise DeviceIdError(
                    f"CUDA device {ordinal} does not exist under CUDA_VISIBLE_DEVICES="
                    f"{cuda_visible_devices!r} ({len(visible)} visible)"
                )
            dev = visible[ordinal]
        else:
            dev = resolve_device(ref, devices)
        if dev.key in named:
            raise DeviceIdError(
                f"GPU ids {named[dev.key]!r} and {ref!r} name the same GPU ({dev.uuid})"
            )
        named[dev.key] = ref
        out.append(dev)
    return tuple(out)
