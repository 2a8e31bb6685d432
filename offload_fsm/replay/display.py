"""How replay names GPUs and sizes in its messages (summary, trace, plot and metrics reuse it)."""

from __future__ import annotations

GIB = 1024**3


def short_gpu(key: str) -> str:
    """``GPU-1a2b3c4d-...`` -> ``GPU-1a2b3c4d`` (node prefixes kept)."""
    node, _, uuid = key.rpartition("/")
    head = uuid.split("-")
    short = "-".join(head[:2]) if len(head) > 2 and head[0] == "GPU" else uuid
    return f"{node}/{short}" if node else short


def gib(nbytes: int | None) -> str:
    return "unknown" if nbytes is None else f"{nbytes / GIB:.1f} GiB"
