"""A cheaper ``__init__`` for frozen, slotted dataclasses built on the hot path.

A frozen dataclass's generated ``__init__`` sets each field with
``object.__setattr__(self, name, value)``: a lookup of ``name`` through the class and a
generic call, per field. Events, probe rounds and gate verdicts are built about a thousand
times per node and cycle of the scale benchmark, and those calls were about half of what
building one cost (``python -m tests.bench.bench_core``, section 1b).

:func:`fast_frozen_init` swaps in an ``__init__`` that calls each field's slot descriptor
directly: the same signature (names, order, defaults, keyword-only markers, annotations),
the same ``__post_init__`` call, and the class stays frozen (assigning a field still raises
``FrozenInstanceError``). A class it cannot reproduce exactly (a ``default_factory``, an
``init=False`` field, an ``InitVar``) is refused when it is defined (the two parameter lists are
compared then), not built approximately.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)

# The dataclass-generated __init__ of each class given a fast one (tests compare the two).
DATACLASS_INITS: dict[type, Callable[..., None]] = {}


def fast_frozen_init(cls: T) -> T:
    """Class decorator, above ``@dataclass(frozen=True, slots=True)``."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__qualname__}: fast_frozen_init needs a frozen, slotted dataclass")
    fields = dataclasses.fields(cls)
    for f in fields:
        if not f.init or f.default_factory is not dataclasses.MISSING:
            raise TypeError(
                f"{cls.__qualname__}.{f.name}: fast_frozen_init takes fields set from "
                "__init__ with a plain default or none (no init=False, no default_factory)"
            )
    original: Callable[..., None] = vars(cls)["__init__"]
    namespace: dict[str, Any] = {}
    positional = [_parameter(f, namespace) for f in fields if not f.kw_only]
    keyword = [_parameter(f, namespace) for f in fields if f.kw_only]
    params_src = ["self", *positional, *(["*", *keyword] if keyword else [])]
    body = []
    for f in fields:
        namespace[f"_set_{f.name}"] = _slot(cls, f.name).__set__
        body.append(f"    _set_{f.name}(self, {f.name})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = f"def __init__({', '.join(params_src)}):\n" + "\n".join(body or ["    pass"])
    exec(source, namespace)  # a constructor of names and setters only: nothing from outside
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = original.__doc__
    init.__annotations__ = dict(original.__annotations__)
    # The parameters, by name and order, read off the code objects (``inspect.signature``
    # twice per class is slow at import, for every class decorated). Defaults and
    # keyword-only markers come from the same fields; tests compare the full signatures.
    if _parameters(init) != _parameters(original):  # e.g. an InitVar parameter
        raise TypeError(
            f"{cls.__qualname__}: fast_frozen_init cannot reproduce the parameters "
            f"{_parameters(original)}"
        )
    cls.__init__ = init  # type: ignore[misc]
    DATACLASS_INITS[cls] = original
    return cls


def _parameters(fn: Callable[..., None]) -> tuple[str, ...]:
    code = fn.__code__
    return code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]


def _parameter(f: dataclasses.Field[Any], namespace: dict[str, Any]) -> str:
    """``f``'s parameter in the generated signature; its default goes in ``namespace``."""
    if f.default is dataclasses.MISSING:
        return f.name
    namespace[f"_default_{f.name}"] = f.default
    return f"{f.name}=_default_{f.name}"


def _slot(cls: type, name: str) -> types.MemberDescriptorType:
    """The slot descriptor attribute access finds for ``name`` (the first in the MRO)."""
    for klass in cls.__mro__:
        found = klass.__dict__.get(name)
        if found is not None:
            if not isinstance(found, types.MemberDescriptorType):
                raise TypeError(f"{cls.__qualname__}.{name} is not a slot")
            return found
    raise TypeError(f"{cls.__qualname__}.{name} has no slot")
