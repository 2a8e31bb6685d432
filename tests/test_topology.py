from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload_fsm.core.errors import ConfigError
from offload_fsm.drivers.pipeline import shrink_gpus_for
from offload_fsm.drivers.topology import DUAL_ENV, PipelineTopology, dual_topology, parse_gpu_list

FULL = {
    "MILES_DUAL_P1_TRAIN": "0",
    "MILES_DUAL_P1_INFER": "0,1,2",
    "MILES_DUAL_P2_TRAIN": "3",
    "MILES_DUAL_P2_INFER": "1,2,3",
}


def test_default_four_gpu_topology() -> None:
    p1, p2 = dual_topology(4, env={})
    assert (p1.train, p1.infer, p2.train, p2.infer) == ((0,), (0, 1, 2), (3,), (1, 2, 3))
    assert shrink_gpus_for(p1, [p2]) == (0, 1, 2)


def test_env_topology_is_read() -> None:
    env = dict(FULL, MILES_DUAL_P2_INFER="1, 2,3")
    p1, p2 = dual_topology(4, env=env)
    assert (p1.infer, p2.infer) == ((0, 1, 2), (1, 2, 3))


@pytest.mark.parametrize("drop", DUAL_ENV)
def test_partial_env_names_the_missing(drop: str) -> None:
    env = {k: v for k, v in FULL.items() if k != drop}
    with pytest.raises(ConfigError, match=f"missing: {drop}"):
        dual_topology(4, env=env)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("MILES_DUAL_P1_INFER", "0,1,9", "out of range"),
        ("MILES_DUAL_P1_INFER", "0,1,1", "duplicates"),
        ("MILES_DUAL_P1_INFER", "0,x", "MILES_DUAL_P1_INFER='0,x'"),
        ("MILES_DUAL_P1_INFER", "", "MILES_DUAL_P1_INFER=''"),
        ("MILES_DUAL_P1_INFER", "0,,1", "comma-separated"),
        ("MILES_DUAL_P1_INFER", "-1,0", "comma-separated"),
        ("MILES_DUAL_P1_TRAIN", "3", "subset of infer"),
        ("MILES_DUAL_P2_TRAIN", "1.5", "comma-separated"),
    ],
)
def test_bad_env_values(key: str, value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        dual_topology(4, env=dict(FULL, **{key: value}))


def test_disjoint_fallback_only_when_count_fits() -> None:
    p1, p2 = dual_topology(6, env={})
    assert (p1.infer, p2.infer) == ((0, 1, 2), (3, 4, 5))
    assert not set(p1.infer) & set(p2.infer)
    with pytest.raises(ConfigError, match="GPU count=5"):
        dual_topology(5, env={})
    with pytest.raises(ConfigError, match="GPU count=1"):
        dual_topology(1, env={})


@pytest.mark.parametrize(
    ("infer", "gpe", "gpu", "index"),
    [
        ((2, 3), 1, 2, 0),  # the pool that once was indexed as 2 (a KeyError skipped the gate)
        ((2, 3), 1, 3, 1),
        ((0, 2, 4, 6), 1, 4, 2),
        ((0, 2, 4, 6), 2, 4, 1),
        ((0, 2, 4, 6), 2, 2, 0),
    ],
)
def test_engine_index_uses_the_pipeline_mapping(
    infer: tuple[int, ...], gpe: int, gpu: int, index: int
) -> None:
    topo = PipelineTopology("p", (infer[0],), infer, gpe)
    assert topo.engine_index(gpu) == index


def test_gpu_outside_pool_is_an_error_not_a_skip() -> None:
    topo = PipelineTopology("p", (2,), (2, 3))
    with pytest.raises(ConfigError, match="p GPU id=0"):
        topo.engine_index(0)


def test_gpus_per_engine_must_divide() -> None:
    with pytest.raises(ConfigError, match="gpus_per_engine"):
        PipelineTopology("p", (0,), (0, 1, 2), 2)


@given(st.text(max_size=12))
def test_gpu_list_parser_never_crashes(raw: str) -> None:
    try:
        ids = parse_gpu_list("X", raw, 8)
    except ConfigError as exc:
        assert "X=" in str(exc)
    else:
        assert len(set(ids)) == len(ids) and all(0 <= i < 8 for i in ids)
