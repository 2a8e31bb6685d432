"""The ``ray`` module, imported only when a call needs it (``ray`` is the optional extra)."""

from __future__ import annotations

from typing import Any

from offload_fsm.core.errors import BackendUnavailable

RAY_EXTRA = "offload-fsm[ray]"


def import_ray() -> Any:
    """The ``ray`` module, or :class:`BackendUnavailable` naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailable(
            f"Ray support needs the 'ray' package: pip install '{RAY_EXTRA}' ({exc})"
        ) from exc
    return ray
