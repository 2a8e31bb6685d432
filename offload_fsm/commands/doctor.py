"""``offload-fsm doctor``: what this machine offers for measuring GPU memory, and what
offload_fsm will do about it. Exits 0 whenever it could look (a machine without any GPU
included: it says so)."""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import anyio

from offload_fsm.core.errors import ProbeError
from offload_fsm.probe.base import GpuDevice
from offload_fsm.probe.devices import cuda_visible_order
from offload_fsm.probe.nvml import NvmlBackend
from offload_fsm.probe.processes import HOST_PID_NAMESPACE, detect_pid_namespace
from offload_fsm.probe.smi import SmiBackend


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check NVML, nvidia-smi, PID namespace and GPU ids here")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--smi", default="nvidia-smi", help="the nvidia-smi executable to check")
    p.add_argument("--proc-root", default="/proc", help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    found = anyio.run(
        functools.partial(
            diagnose, smi_executable=args.smi, environ=os.environ, proc_root=args.proc_root
        )
    )
    print(json.dumps(found, indent=2) if args.json else render(found))
    return 0


def _device(d: GpuDevice) -> dict[str, Any]:
    return {
        "index": d.index,
        "uuid": d.uuid,
        "bus_id": d.bus_id,
        "name": d.name,
        "total_bytes": d.total_bytes,
    }


async def diagnose(
    *,
    nvml_module: Any = None,
    smi_executable: str = "nvidia-smi",
    environ: Mapping[str, str] | None = None,
    proc_root: str = "/proc",
) -> dict[str, Any]:
    """The findings as plain data (see :func:`render`)."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}

    nvml = NvmlBackend(nvml_module)
    devices: tuple[GpuDevice, ...] = ()
    try:
        info = await nvml.info()
    except ProbeError as exc:
        out["nvml"] = {"ok": False, "error": str(exc)}
    else:
        devices = info.devices
        out["nvml"] = {
            "ok": True,
            "driver_version": info.driver_version,
            "nvml_version": info.nvml_version,
            "cuda_driver_version": info.cuda_driver_version,
            "devices": [_device(d) for d in devices],
            "mig": {key: {"current": cur, "pending": pend} for key, cur, pend in info.mig_modes},
        }
    finally:
        await nvml.aclose()

    smi = SmiBackend(smi_executable, env=dict(env))
    path = shutil.which(smi_executable, path=env.get("PATH", os.defpath))
    try:
        smi_devices = await smi.devices()
    except ProbeError as exc:
        out["smi"] = {"ok": False, "path": path, "error": str(exc)}
    else:
        out["smi"] = {"ok": True, "path": path, "devices": len(smi_devices)}
        devices = devices or smi_devices

    namespace = detect_pid_namespace(proc_root)
    try:
        link: str | None = os.readlink(os.path.join(proc_root, "self", "ns", "pid"))
    except OSError:
        link = None
    out["pid_namespace"] = {"value": namespace, "link": link, "host": HOST_PID_NAMESPACE}

    visible = env.get("CUDA_VISIBLE_DEVICES")
    order = env.get("CUDA_DEVICE_ORDER")
    cuda: dict[str, Any] = {"CUDA_VISIBLE_DEVICES": visible, "CUDA_DEVICE_ORDER": order}
    if devices:
        try:
            mapped = cuda_visible_order(visible, devices, cuda_device_order=order)
        except ProbeError as exc:
            cuda["error"] = str(exc)
        else:
            cuda["mapping"] = [
                {"cuda": i, "index": d.index, "uuid": d.uuid, "bus_id": d.bus_id}
                for i, d in enumerate(mapped)
            ]
    out["cuda"] = cuda
    out["gpus"] = len(devices)
    out["verdict"] = _verdict(out)
    return out


def _verdict(found: dict[str, Any]) -> list[str]:
    nvml_ok = found["nvml"]["ok"]
    smi_ok = found["smi"]["ok"]
    lines = []
    if not nvml_ok and not smi_ok:
        lines.append(
            "no NVIDIA GPU is usable on this machine (neither NVML nor nvidia-smi works): "
            "gates on real GPUs would fail closed; the fake backend (offload-fsm demo, "
            "offload-fsm probe --backend fake) works"
        )
        return lines
    if nvml_ok:
        lines.append("probes will use NVML (in-process, one thread hop per round)")
    else:
        lines.append(
            "probes will fall back to nvidia-smi (~25 ms a query; NVML failed: "
            f"{found['nvml']['error']})"
        )
    if found["gpus"] == 0:
        lines.append("the driver sees no GPUs")
    ns = found["pid_namespace"]["value"]
    if ns != "host":
        lines.append(
            f"PID namespace is {ns}: per-engine attribution will be unknown; whole-GPU "
            "gates still work"
        )
    if "error" in found["cuda"]:
        lines.append(f"CUDA_VISIBLE_DEVICES cannot be mapped safely: {found['cuda']['error']}")
    mig = found["nvml"].get("mig", {})
    if any(m["current"] == 1 for m in mig.values()):
        lines.append("MIG is enabled on some GPU: per-process usage there may be unknown")
    return lines


def render(found: dict[str, Any]) -> str:
    nv = found["nvml"]
    if nv["ok"]:
        nvml = (
            f"loadable; driver {nv['driver_version']}, NVML {nv['nvml_version']}, "
            f"CUDA driver API {nv['cuda_driver_version']}"
        )
    else:
        nvml = f"not usable ({nv['error']})"
    smi = found["smi"]
    smi_text = (
        f"{smi['path']} ({smi['devices']} GPUs)" if smi["ok"] else f"not usable ({smi['error']})"
    )
    ns = found["pid_namespace"]
    cuda = found["cuda"]
    lines = [
        f"NVML:         {nvml}",
        f"nvidia-smi:   {smi_text}",
        f"PID namespace: {ns['value']} ({ns['link'] or 'unreadable'}; host is {ns['host']})",
        f"CUDA_VISIBLE_DEVICES={cuda['CUDA_VISIBLE_DEVICES']!r} "
        f"CUDA_DEVICE_ORDER={cuda['CUDA_DEVICE_ORDER']!r}",
    ]
    for m in cuda.get("mapping", []):
        lines.append(f"  CUDA device {m['cuda']} -> gpu{m['index']} {m['uuid']} ({m['bus_id']})")
    if "error" in cuda:
        lines.append(f"  {cuda['error']}")
    for d in nv.get("devices", []):
        mig = nv.get("mig", {}).get(d["uuid"], {})
        mode = {0: "off", 1: "on", None: "n/a"}.get(mig.get("current"), "?")
        lines.append(f"gpu{d['index']}  {d['uuid']}  {d['bus_id']}  {d['name']}  MIG {mode}")
    lines.append(f"GPUs: {found['gpus']}")
    lines += [f"=> {v}" for v in found["verdict"]]
    return "\n".join(lines)
