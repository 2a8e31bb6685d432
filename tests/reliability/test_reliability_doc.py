"""docs/reliability.md names the tests that prove each row: every name must exist, and every
fault-matrix test must be named (a row without its proof, or a proof without its row, fails)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parents[1] / "docs" / "reliability.md"
REF = re.compile(r"`(test_\w+\.py)::(test_\w+)`")


def _tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test_")
    }


def test_every_test_named_in_the_doc_exists() -> None:
    refs = REF.findall(DOC.read_text())
    assert len(refs) > 40
    missing = [f"{f}::{t}" for f, t in refs if t not in _tests(HERE / f)]
    assert not missing, missing


def test_every_reliability_test_is_in_the_doc() -> None:
    named = set(REF.findall(DOC.read_text()))
    files = [p for p in HERE.glob("test_*.py") if p.name != Path(__file__).name]
    unnamed = [f"{p.name}::{t}" for p in files for t in _tests(p) if (p.name, t) not in named]
    assert not unnamed, unnamed
