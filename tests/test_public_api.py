"""The curated public API: every name in ``offload_fsm.__all__`` imports from the package, is
the object its defining module holds, and is documented in docs/api.md."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import offload_fsm

ROOT = Path(__file__).resolve().parents[1]
API_DOC = ROOT / "docs" / "api.md"
INIT = Path(offload_fsm.__file__)


@pytest.mark.parametrize("name", offload_fsm.__all__)
def test_every_public_name_imports_from_the_package(name: str) -> None:
    value = getattr(offload_fsm, name)
    assert value is not None
    if name != "__version__":
        module = importlib.import_module(offload_fsm._EXPORTS[name])
        assert getattr(module, name) is value
        assert getattr(offload_fsm, name) is value  # cached after the first lookup


def test_every_public_name_is_documented_in_api_md() -> None:
    documented = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", API_DOC.read_text()))
    missing = sorted(set(offload_fsm.__all__) - documented)
    assert not missing, f"not in docs/api.md: {missing}"


def test_all_lists_each_export_once_and_nothing_else() -> None:
    assert len(offload_fsm.__all__) == len(set(offload_fsm.__all__))
    assert set(offload_fsm.__all__) == set(offload_fsm._EXPORTS) | {"__version__"}


def test_type_checkers_see_the_same_names_from_the_same_modules() -> None:
    tree = ast.parse(INIT.read_text())
    seen: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module is not None
                seen.update({a.asname or a.name: imp.module for a in imp.names})
    assert seen == offload_fsm._EXPORTS


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        offload_fsm.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        from offload_fsm import no_such_name  # type: ignore[attr-defined]  # noqa: F401


def test_importing_the_package_loads_none_of_its_modules() -> None:
    # The CLI and every simulated engine process import the package: it must stay cheap.
    code = (
        "import sys, offload_fsm; "
        "print(sorted(m for m in sys.modules if m.startswith('offload_fsm.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip() == "[]"
