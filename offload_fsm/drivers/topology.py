"""Pipeline topologies: which GPUs a pipeline's trainer and engines use.

The dual driver reads ``MILES_DUAL_P1_TRAIN``, ``MILES_DUAL_P1_INFER``, ``MILES_DUAL_P2_TRAIN``,
``MILES_DUAL_P2_INFER`` (comma-separated physical GPU ids): all four or none. Within a pipeline
the train GPUs must be a subset of the infer GPUs; ids are in range and not duplicated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from offload_fsm.core.errors import ConfigError

DUAL_ENV = (
    "MILES_DUAL_P1_TRAIN",
    "MILES_DUAL_P1_INFER",
    "MILES_DUAL_P2_TRAIN",
    "MILES_DUAL_P2_INFER",
)


@dataclass(frozen=True, slots=True)
class PipelineTopology:
    name: str
    train: tuple[int, ...]
    infer: tuple[int, ...]
    gpus_per_engine: int = 1

    def __post_init__(self) -> None:
        if not self.infer:
            raise ConfigError(f"{self.name}.infer", self.infer, "at least one GPU")
        if not self.train:
            raise ConfigError(f"{self.name}.train", self.train, "at least one GPU")
        if self.gpus_per_engine < 1 or len(self.infer) % self.gpus_per_engine:
            raise ConfigError(
                f"{self.name}.gpus_per_engine",
                self.gpus_per_engine,
                f"a divisor of the {len(self.infer)} infer GPUs {list(self.infer)}",
            )
        missing = [g for g in self.train if g not in self.infer]
        if missing:
            raise ConfigError(
                f"{self.name}.train",
                list(self.train),
                f"a subset of infer {list(self.infer)} ({missing} are not)",
            )

    @property
    def engine_groups(self) -> tuple[tuple[int, ...], ...]:
        """The GPUs of each engine, in local engine index order."""
        g = self.gpus_per_engine
        return tuple(self.infer[i : i + g] for i in range(0, len(self.infer), g))

    def engine_index(self, gpu: int) -> int:
        """Local engine index of physical ``gpu``, from this pipeline's own infer mapping.

        Uses the GPU's position in the mapping, so non-contiguous pools ([2, 3], [0, 2, 4, 6])
        map right; a GPU outside the pool is an error, never a silent skip.
        """
        try:
            return self.infer.index(gpu) // self.gpus_per_engine
        except ValueError:
            raise ConfigError(
                f"{self.name} GPU id", gpu, f"one of this pipeline's infer GPUs {list(self.infer)}"
            ) from None

    def engines_on(self, gpus: Sequence[int]) -> tuple[int, ...]:
        """Local indices of the engines that use any of ``gpus``."""
        return tuple(sorted({self.engine_index(g) for g in gpus if g in self.infer}))


def parse_gpu_list(name: str, raw: str, gpu_count: int) -> tuple[int, ...]:
    accepted = f"comma-separated GPU ids in 0..{gpu_count - 1}, no duplicates (e.g. 0,1,2)"
    parts = [p.strip() for p in raw.split(",")]
    if not raw.strip() or any(not p for p in parts):
        raise ConfigError(name, raw, accepted)
    ids = []
    for part in parts:
        if not (part.isascii() and part.isdigit()):
            raise ConfigError(name, raw, accepted)
        value = int(part)
        if value >= gpu_count:
            raise ConfigError(name, raw, f"{accepted}; {value} is out of range")
        ids.append(value)
    if len(set(ids)) != len(ids):
        raise ConfigError(name, raw, f"{accepted}; duplicates found")
    return tuple(ids)


def dual_topology(
    gpu_count: int, env: Mapping[str, str] | None = None, gpus_per_engine: int = 1
) -> tuple[PipelineTopology, PipelineTopology]:
    """The two pipelines of the dual driver, from the environment or the defaults.

    Defaults: on 4 GPUs, P1 train=[0] infer=[0,1,2]; P2 train=[3] infer=[1,2,3]. On another
    even count, disjoint halves (each pipeline trains on its first GPU); an odd count with no
    environment is an error (no pipeline gets a silent share).
    """
    env = os.environ if env is None else env
    if gpu_count < 2:
        raise ConfigError("GPU count", gpu_count, "at least 2 GPUs for two pipelines")
    present = [k for k in DUAL_ENV if k in env]
    if present and len(present) != len(DUAL_ENV):
        missing = [k for k in DUAL_ENV if k not in env]
        raise ConfigError(
            "MILES_DUAL_* topology",
            ", ".join(present),
            f"all four of {', '.join(DUAL_ENV)} or none (missing: {', '.join(missing)})",
        )
    if present:
        t1, i1, t2, i2 = (parse_gpu_list(k, env[k], gpu_count) for k in DUAL_ENV)
        return (
            PipelineTopology("p1", t1, i1, gpus_per_engine),
            PipelineTopology("p2", t2, i2, gpus_per_engine),
        )
    if gpu_count == 4 and gpus_per_engine == 1:
        return (PipelineTopology("p1", (0,), (0, 1, 2)), PipelineTopology("p2", (3,), (1, 2, 3)))
    half = gpu_count // 2
    if gpu_count % 2 or half % gpus_per_engine:
        raise ConfigError(
            "GPU count",
            gpu_count,
            f"4 GPUs for the default overlapping topology, or an even count whose halves are a "
            f"multiple of {gpus_per_engine} GPUs per engine; or set {', '.join(DUAL_ENV)}",
        )
    first, second = tuple(range(half)), tuple(range(half, gpu_count))
    return (
        PipelineTopology("p1", first[:gpus_per_engine], first, gpus_per_engine),
        PipelineTopology("p2", second[:gpus_per_engine], second, gpus_per_engine),
    )
