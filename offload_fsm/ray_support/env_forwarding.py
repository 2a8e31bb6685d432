"""``runtime_env`` forwarding of the driver's environment variables to actors (no Ray needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from offload_fsm.core.errors import ConfigError
from offload_fsm.settings import parse_positive_gib

# Ray does not pass the driver's environment to actors; MILES drivers forward these.
FORWARDED_ENV = (
    "MILES_MAX_RESIDUAL_GPU_MEM_GB",
    "MILES_TMS_HOOK_MODE",
    "MILES_SKIP_TMS_PAUSE",
    "MILES_SKIP_NODE_PG_PIN",
    "TMS_INIT_ENABLE_CPU_BACKUP",
    "CUDA_DEVICE_MAX_CONNECTIONS",
    "NCCL_NVLS_ENABLE",
)


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Those of :data:`FORWARDED_ENV` that are set in ``environ`` (default ``os.environ``).

    ``MILES_MAX_RESIDUAL_GPU_MEM_GB`` is validated here, in the driver, so a bad value fails
    before any actor starts (:class:`ConfigError` naming it).
    """
    env = os.environ if environ is None else environ
    out = {name: env[name] for name in FORWARDED_ENV if name in env}
    if "MILES_MAX_RESIDUAL_GPU_MEM_GB" in out:
        parse_positive_gib("MILES_MAX_RESIDUAL_GPU_MEM_GB", out["MILES_MAX_RESIDUAL_GPU_MEM_GB"])
    return out


def runtime_env(
    user: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``user``'s runtime_env with :func:`forwarded_env` merged into its ``env_vars``.

    The user's keys are kept. A variable the user set in ``env_vars`` to a *different* value
    than the driver's environment is a :class:`ConfigError` naming it (nothing is clobbered
    silently, either way); the same value is fine. ``user`` is not modified.
    """
    merged: dict[str, Any] = dict(user or {})
    given = merged.get("env_vars", {})
    if not isinstance(given, Mapping):
        raise ConfigError("runtime_env['env_vars']", given, "a mapping of str to str")
    env_vars: dict[str, str] = {}
    for name, value in given.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ConfigError(f"runtime_env['env_vars'][{name!r}]", value, "a str value")
        env_vars[name] = value
    for name, value in forwarded_env(environ).items():
        if name in env_vars and env_vars[name] != value:
            raise ConfigError(
                f"runtime_env['env_vars'][{name!r}]",
                env_vars[name],
                f"{value!r} as the driver's environment sets it (it is forwarded; "
                "leave it out of runtime_env or make the two agree)",
            )
        env_vars[name] = value
    if env_vars or "env_vars" in merged:
        merged["env_vars"] = env_vars
    return merged
