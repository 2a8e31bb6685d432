"""Run settings from a TOML file (``offload-fsm demo --config FILE``), strictly checked.

TOML because it is what Python itself reads (``tomllib``, 3.11+; the ``tomli`` backport is a
dependency on 3.10 only) and it has real types: numbers, booleans, strings, arrays. Every key
is checked: an unknown key, a wrong type (``true`` where a number belongs, ``"8"`` where 8
does) or a value out of range is a :class:`~offload_fsm.errors.ConfigError` naming the file,
the key and what is accepted; nothing is defaulted silently. An example::

    threshold = 8.0          # wake gate: max whole-GPU used GiB
    steps = 5
    settle = 3
    gate_timeout = 60        # seconds
    seed = 0
    gpus = 4
    gpu_gib = 80
    rollout = 2.0            # seconds per step
    train = 3.0
    cotenant = true
    late_release_share = 0.3
    out = "runs"
    # run_id = "my-run"      fail = "p2.engine1:resume:2"      quiet = false

    [topology]               # all four or none (instead of MILES_DUAL_*)
    p1_train = [0]
    p1_infer = [0, 1, 2]
    p2_train = [3]
    p2_infer = [1, 2, 3]

Precedence: a command-line flag, then the file, then the environment
(``MILES_MAX_RESIDUAL_GPU_MEM_GB``, ``MILES_DUAL_*``), then the built-in default.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from offload_fsm.config import parse_positive_gib, parse_positive_int, parse_positive_seconds
from offload_fsm.errors import ConfigError
from offload_fsm.topology import DUAL_ENV

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

TOPOLOGY_KEYS = ("p1_train", "p1_infer", "p2_train", "p2_infer")


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, value, "a number (not a string or a boolean)")
    return float(value)


def _integer(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, value, f"an integer >= {minimum}")
    return parse_positive_int(name, value, minimum=minimum)


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(name, value, "a non-empty string")
    return value


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(name, value, "true or false")
    return value


def _share(name: str, value: object) -> float:
    share = _number(name, value)
    if not (math.isfinite(share) and 0.0 <= share <= 1.0):
        raise ConfigError(name, value, "a number in [0, 1]")
    return share


# key -> (argparse dest, check(name, value) -> the value as the flag's string form)
_KEYS: dict[str, tuple[str, Callable[[str, object], object]]] = {
    "threshold": ("threshold", lambda n, v: parse_positive_gib(n, _number(n, v))),
    "steps": ("steps", lambda n, v: _integer(n, v, 1)),
    "settle": ("settle", lambda n, v: _integer(n, v, 1)),
    "gate_timeout": ("gate_timeout", lambda n, v: parse_positive_seconds(n, _number(n, v))),
    "seed": ("seed", lambda n, v: _integer(n, v, 0)),
    "gpus": ("gpus", lambda n, v: _integer(n, v, 1)),
    "gpu_gib": ("gpu_gib", lambda n, v: parse_positive_gib(n, _number(n, v))),
    "rollout": ("rollout", lambda n, v: parse_positive_seconds(n, _number(n, v))),
    "train": ("train", lambda n, v: parse_positive_seconds(n, _number(n, v))),
    "cotenant": ("no_cotenant", lambda n, v: not _flag(n, v)),
    "late_release_share": ("late_release_share", _share),
    "out": ("out", _text),
    "run_id": ("run_id", _text),
    "fail": ("fail", _text),
    "quiet": ("quiet", _flag),
}


@dataclass(frozen=True, slots=True)
class RunConfig:
    """What a config file set: values by argparse dest, and the topology if it has one."""

    path: str
    values: Mapping[str, object] = field(default_factory=dict)
    topology: Mapping[str, tuple[int, ...]] | None = None  # p1_train ... -> GPU ids

    def by_key(self) -> dict[str, tuple[str, object]]:
        """The file's key -> (argparse dest, value), for the keys it set."""
        return {k: (d, self.values[d]) for k, (d, _) in _KEYS.items() if d in self.values}

    def topology_env(self) -> dict[str, str]:
        """The topology as the ``MILES_DUAL_*`` values it replaces (empty: none set)."""
        if self.topology is None:
            return {}
        return {
            env: ",".join(map(str, self.topology[key]))
            for env, key in zip(DUAL_ENV, TOPOLOGY_KEYS, strict=True)
        }


def load_run_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and check a run config file (see the module docstring)."""
    where = os.fspath(path)
    try:
        with open(where, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError("--config", where, f"a readable TOML file ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("--config", where, f"a valid TOML file ({exc})") from None
    values: dict[str, object] = {}
    topology = None
    for key, value in data.items():
        name = f"{where}: {key}"
        if key == "topology":
            topology = _topology(where, value)
            continue
        if key not in _KEYS:
            accepted = ", ".join([*_KEYS, "[topology]"])
            raise ConfigError(f"{where}: key", key, f"one of {accepted}")
        dest, check = _KEYS[key]
        values[dest] = check(name, value)
    return RunConfig(where, values, topology)


def _topology(where: str, table: object) -> dict[str, tuple[int, ...]]:
    name = f"{where}: [topology]"
    if not isinstance(table, dict):
        raise ConfigError(name, table, f"a table with {', '.join(TOPOLOGY_KEYS)}")
    unknown = [k for k in table if k not in TOPOLOGY_KEYS]
    if unknown:
        raise ConfigError(f"{name} key", unknown[0], f"one of {', '.join(TOPOLOGY_KEYS)}")
    missing = [k for k in TOPOLOGY_KEYS if k not in table]
    if missing:
        raise ConfigError(
            name,
            sorted(table),
            f"all of {', '.join(TOPOLOGY_KEYS)} (missing: {', '.join(missing)})",
        )
    out: dict[str, tuple[int, ...]] = {}
    for key in TOPOLOGY_KEYS:
        ids = table[key]
        if (
            not isinstance(ids, list)
            or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
        ):
            raise ConfigError(f"{name} {key}", ids, "a non-empty array of GPU ids (integers >= 0)")
        out[key] = tuple(ids)
    return out


__all__ = ["TOPOLOGY_KEYS", "RunConfig", "load_run_config"]
