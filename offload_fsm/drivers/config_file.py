"""Run configuration files: real engines for the drivers, read strictly.

A TOML (``.toml``) or JSON (``.json``) file::

    [run]                        # optional; flags override these
    threshold_gib = 8
    settle = 3
    gate_timeout_s = 60
    steps = 5
    backend = "auto"             # auto | nvml | smi

    [[pipeline]]
    name = "p1"
    train = [0]
    infer = [0, 1, 2]

    [[engine]]
    id = "p1.engine0"
    pipeline = "p1"
    role = "engine"              # engine | trainer
    adapter = "sglang"           # sglang | vllm | trainer
    url = "http://127.0.0.1:30000"
    root_pid = 12345             # the launcher's pid: its process tree is the engine's
    gpus = [0]                   # physical NVML indices, UUIDs or PCI bus ids
    api_key = "..."              # optional: sent as "Authorization: Bearer ..." (the
                                 # server's --api-key); never logged (offload_fsm.core.redact)

    [[engine]]
    id = "p1.trainer"
    pipeline = "p1"
    role = "trainer"
    adapter = "trainer"
    offload = "my_pkg.train:offload"   # "module:function", sync or async, takes tags
    onload = "my_pkg.train:onload"
    gpus = [0]

Unknown keys, wrong types and missing keys are :class:`ConfigError` naming the file and the key
path (``engine[1].url``); nothing is guessed. A URL's password (``http://user:pw@host``) and an
``api_key`` are registered as secrets as the file is read, so no event, log line, error or
report names them (:mod:`offload_fsm.core.redact`).
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offload_fsm.core.errors import ConfigError
from offload_fsm.core.redact import register_secret, register_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ADAPTERS = ("sglang", "vllm", "trainer")
ROLES = ("engine", "trainer")
_RUN_KEYS = {
    "threshold_gib": (int, float),
    "settle": int,
    "gate_timeout_s": (int, float),
    "steps": int,
    "backend": str,
}


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    name: str
    train: tuple[int, ...]
    infer: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    id: str
    pipeline: str
    role: str
    adapter: str
    gpus: tuple[str | int, ...]
    url: str | None = None
    root_pid: int | None = None
    offload: str | None = None
    onload: str | None = None
    api_key: str | None = field(default=None, repr=False)  # a secret: never in a repr


@dataclass(frozen=True, slots=True)
class RunConfig:
    path: Path
    run: Mapping[str, Any] = field(default_factory=dict)
    pipelines: tuple[PipelineConfig, ...] = ()
    engines: tuple[EngineConfig, ...] = ()


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a run configuration file."""
    p = Path(path)
    where = str(p)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError("config file", where, f"a readable file ({exc.strerror})") from exc
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(raw.decode("utf-8"))
        elif p.suffix == ".json":
            data = json.loads(raw)
        else:
            raise ConfigError("config file", where, "a .toml or .json file")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # also nested too deep
        raise ConfigError("config file", where, f"valid {p.suffix[1:].upper()} ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where}", type(data).__name__, "a table/object at the top")
    _only(data, {"run", "pipeline", "engine"}, where)
    run = data.get("run", {})
    _table(run, f"{where}: run")
    _only(run, set(_RUN_KEYS), f"{where}: run")
    for key, kind in _RUN_KEYS.items():
        if key in run:
            _type(run[key], kind, f"{where}: run.{key}")
    pipelines = tuple(
        _pipeline(item, f"{where}: pipeline[{i}]")
        for i, item in enumerate(_list(data.get("pipeline", []), f"{where}: pipeline"))
    )
    engines = tuple(
        _engine(item, f"{where}: engine[{i}]")
        for i, item in enumerate(_list(data.get("engine", []), f"{where}: engine"))
    )
    if not engines:
        raise ConfigError(f"{where}: engine", [], "at least one [[engine]]")
    ids = [e.id for e in engines]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"{where}: engine ids", dupes, "distinct ids")
    names = {pl.name for pl in pipelines}
    for i, eng in enumerate(engines):
        if pipelines and eng.pipeline not in names:
            raise ConfigError(
                f"{where}: engine[{i}].pipeline",
                eng.pipeline,
                f"one of the pipelines {sorted(names)}",
            )
    return RunConfig(p, dict(run), pipelines, engines)


def load_hook(spec: str, name: str) -> Callable[..., Any]:
    """``"module:function"`` -> the callable (a trainer's offload / onload)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(name, spec, '"module:function"')
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(name, spec, f"an importable callable ({exc})") from exc
    if not callable(obj):
        raise ConfigError(name, spec, "a callable")
    return obj  # type: ignore[no-any-return]


def _pipeline(item: Any, where: str) -> PipelineConfig:
    _table(item, where)
    _only(item, {"name", "train", "infer"}, where)
    name = _required(item, "name", str, where)
    train = tuple(_ints(_required(item, "train", list, where), f"{where}.train"))
    infer = tuple(_ints(_required(item, "infer", list, where), f"{where}.infer"))
    return PipelineConfig(name, train, infer)


def _engine(item: Any, where: str) -> EngineConfig:
    _table(item, where)
    _only(
        item,
        {
            "id",
            "pipeline",
            "role",
            "adapter",
            "gpus",
            "url",
            "root_pid",
            "offload",
            "onload",
            "api_key",
        },
        where,
    )
    if isinstance(item.get("url"), str):
        register_url(item["url"])  # before anything can quote it in an error
    if isinstance(item.get("api_key"), str):
        register_secret(item["api_key"])
    eid = _required(item, "id", str, where)
    role = _required(item, "role", str, where)
    if role not in ROLES:
        raise ConfigError(f"{where}.role", role, " | ".join(ROLES))
    adapter = _required(item, "adapter", str, where)
    if adapter not in ADAPTERS:
        raise ConfigError(f"{where}.adapter", adapter, " | ".join(ADAPTERS))
    gpus = _required(item, "gpus", list, where)
    if not gpus or not all(isinstance(g, (str, int)) and not isinstance(g, bool) for g in gpus):
        raise ConfigError(f"{where}.gpus", gpus, "a non-empty list of GPU ids")
    cfg = EngineConfig(
        id=eid,
        pipeline=_required(item, "pipeline", str, where),
        role=role,
        adapter=adapter,
        gpus=tuple(gpus),
        url=_optional(item, "url", str, where),
        root_pid=_optional(item, "root_pid", int, where),
        offload=_optional(item, "offload", str, where),
        onload=_optional(item, "onload", str, where),
        api_key=_optional(item, "api_key", str, where),
    )
    if adapter in ("sglang", "vllm"):
        if cfg.url is None:
            raise ConfigError(f"{where}.url", None, f"the {adapter} server's URL")
        if cfg.offload or cfg.onload:
            raise ConfigError(f"{where}.offload", cfg.offload, "only for adapter = 'trainer'")
        if cfg.api_key is not None:
            if not cfg.api_key.strip() or cfg.api_key != cfg.api_key.strip():
                raise ConfigError(f"{where}.api_key", "***", "a non-empty key without spaces")
            if "@" in cfg.url.partition("://")[2].split("/", 1)[0]:
                # httpx turns a URL's user-info into Basic auth, which would replace the key
                raise ConfigError(
                    f"{where}.api_key", "***", "either api_key or user-info in the url, not both"
                )
    elif cfg.api_key is not None:
        raise ConfigError(f"{where}.api_key", "***", "only for adapter = 'sglang' or 'vllm'")
    elif cfg.offload is None or cfg.onload is None:
        raise ConfigError(
            f"{where}.offload/onload", (cfg.offload, cfg.onload), '"module:function" for both'
        )
    if cfg.root_pid is not None and cfg.root_pid <= 0:
        raise ConfigError(f"{where}.root_pid", cfg.root_pid, "a positive pid")
    return cfg


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}",
            table[unknown[0]],
            f"a known key ({', '.join(sorted(allowed))})",
        )


def _table(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(where, value, "a table")


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(where, value, "an array of tables")
    return value


def _type(value: Any, kind: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(where, value, f"a {names}")


def _required(table: Mapping[str, Any], key: str, kind: Any, where: str) -> Any:
    if key not in table:
        raise ConfigError(f"{where}.{key}", None, f"a {kind.__name__} (required)")
    _type(table[key], kind, f"{where}.{key}")
    return table[key]


def _optional(table: Mapping[str, Any], key: str, kind: Any, where: str) -> Any:
    if key not in table:
        return None
    _type(table[key], kind, f"{where}.{key}")
    return table[key]


def _ints(values: list[Any], where: str) -> list[int]:
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
    ):
        raise ConfigError(where, values, "a non-empty list of GPU ids >= 0")
    return values
