"""Which engines share a GPU, and which of them must never be awake together.

Two engines whose GPUs overlap conflict unless they share a non-empty ``share_group``; a wake
waits while a conflicting engine holds (or may be about to hold) memory on a shared GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from offload_fsm.core.errors import ConfigError
from offload_fsm.core.lifecycle import OCCUPYING_STATES
from offload_fsm.engines.spec import Engine

ByGpu = Mapping[str, Sequence[Engine]]  # device key -> engines using it


def neighbours(by_gpu: ByGpu, me: Engine) -> list[Engine]:
    """Other engines sharing a GPU with ``me``, each once, in registration order."""
    seen: dict[str, Engine] = {}
    for dev in me.spec.devices:
        for other in by_gpu.get(dev.key, ()):
            if other is not me:
                seen.setdefault(other.id, other)
    return list(seen.values())


def conflicts(by_gpu: ByGpu, me: Engine) -> list[Engine]:
    """Engines that must never be awake together with ``me``: they share a GPU and no
    share group."""
    group = me.spec.share_group
    return [o for o in neighbours(by_gpu, me) if not (group and o.spec.share_group == group)]


def blocking(conflicting: Sequence[Engine]) -> list[str]:
    """Those of ``conflicting`` (see :func:`conflicts`) that block a wake now, as "id (state)"."""
    return [f"{o.id} ({o.state.value})" for o in conflicting if o.state in OCCUPYING_STATES]


def check_wake_group(by_gpu: ByGpu, group: Sequence[Engine]) -> None:
    """Refuse a group whose members would share a GPU awake (ConfigError)."""
    for i, eng in enumerate(group):
        clash = [o.id for o in group[i + 1 :] if o in conflicts(by_gpu, eng)]
        if clash:
            raise ConfigError(
                "wake_many engine_ids",
                [e.id for e in group],
                f"engines that may be awake together ({eng.id} shares a GPU with "
                f"{', '.join(clash)} outside a common share_group)",
            )


__all__ = [
    "ByGpu",
    "blocking",
    "check_wake_group",
    "conflicts",
    "neighbours",
]
