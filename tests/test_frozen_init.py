"""fast_frozen_init: the same constructor as dataclass's, only cheaper, or a refusal."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import dataclass, field

import pytest

from offload_fsm.frozen_init import DATACLASS_INITS, fast_frozen_init

# Every module that decorates a class, so DATACLASS_INITS holds them all.
for _module in ("events", "gate", "lifecycle", "probe.base", "probe.attribution"):
    importlib.import_module(f"offload_fsm.{_module}")

CLASSES = sorted(DATACLASS_INITS, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def test_the_hot_records_all_have_a_fast_init() -> None:
    names = {c.__name__ for c in CLASSES}
    expected = {"Transition", "GateDecision", "MemorySample", "ProbeRound", "DeviceMemory"}
    assert expected | {"GpuProcess", "Verdict", "Step", "Attribution"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_signature_is_the_dataclass_one(cls: type) -> None:
    assert inspect.signature(cls.__init__) == inspect.signature(DATACLASS_INITS[cls])
    assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_builds_what_the_dataclass_init_builds_and_stays_frozen(cls: type) -> None:
    # A distinct value per field, passed as the dataclass would take it (by keyword: every
    # field may be named); values are not type-checked by either __init__.
    values = {f.name: (f.name, i) for i, f in enumerate(dataclasses.fields(cls))}
    fast = cls(**values)
    slow = cls.__new__(cls)
    DATACLASS_INITS[cls](slow, **values)
    for name, value in values.items():
        assert getattr(fast, name) == value == getattr(slow, name)
    assert fast == slow
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(fast, next(iter(values)), "changed")


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_defaults_are_the_dataclass_defaults(cls: type) -> None:
    required = {
        f.name: (f.name,)
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING
    }  # fmt: skip
    fast = cls(**required)
    slow = cls.__new__(cls)
    DATACLASS_INITS[cls](slow, **required)
    for f in dataclasses.fields(cls):
        assert getattr(fast, f.name) is getattr(slow, f.name)


def test_missing_or_misplaced_arguments_are_refused_as_dataclass_refuses_them() -> None:
    from offload_fsm.events import Transition
    from offload_fsm.gate import Verdict

    with pytest.raises(TypeError, match="'trigger'"):
        Transition(seq=1, ts=0.0, run_id="r", src="active", dst="releasing")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="positional"):
        Transition(1, 0.0, "r")  # type: ignore[misc]
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        Verdict(True, (), None, colour="red")  # type: ignore[call-arg]
    verdict = Verdict(True, (1,), 2, "d", True)  # positional where the dataclass allows it
    assert (verdict.passed, verdict.observed, verdict.limit, verdict.detail, verdict.blocked) == (
        True, (1,), 2, "d", True,
    )  # fmt: skip


def test_post_init_runs_after_the_fields_are_set() -> None:
    seen: list[int] = []

    @fast_frozen_init
    @dataclass(frozen=True, slots=True)
    class Positive:
        n: int
        label: str = "x"

        def __post_init__(self) -> None:
            seen.append(self.n)
            if self.n <= 0:
                raise ValueError(f"n must be positive, got {self.n}")

    assert Positive(3).label == "x"
    with pytest.raises(ValueError, match="got -1"):
        Positive(-1)
    assert seen == [3, -1]


def test_inherited_fields_use_the_base_class_slot() -> None:
    @fast_frozen_init
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Base:
        a: int
        b: int = 2

    @fast_frozen_init
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Child(Base):
        c: int

    child = Child(a=1, c=3)
    assert (child.a, child.b, child.c) == (1, 2, 3)
    assert isinstance(child, Base) and child == Child(a=1, b=2, c=3)


def test_classes_it_cannot_reproduce_exactly_are_refused() -> None:
    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = field(default_factory=list)

    @dataclass(frozen=True, slots=True)
    class Computed:
        a: int
        b: int = field(init=False, default=0)

    @dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int
        scale: dataclasses.InitVar[int] = 1

        def __post_init__(self, scale: int) -> None:
            object.__setattr__(self, "a", self.a * scale)

    with pytest.raises(TypeError, match=r"WithInitVar: fast_frozen_init cannot reproduce"):
        fast_frozen_init(WithInitVar)
    with pytest.raises(TypeError, match="Mutable: fast_frozen_init needs a frozen, slotted"):
        fast_frozen_init(Mutable)
    with pytest.raises(TypeError, match="NoSlots: fast_frozen_init needs a frozen, slotted"):
        fast_frozen_init(NoSlots)
    with pytest.raises(TypeError, match=r"Factory\.a: .*no default_factory"):
        fast_frozen_init(Factory)
    with pytest.raises(TypeError, match=r"Computed\.b: .*no init=False"):
        fast_frozen_init(Computed)
