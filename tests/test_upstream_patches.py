"""The integration patches under docs/patches/ still apply to the upstream files they name
(see tests/upstream_patches.py for how, without storing upstream code here)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.upstream_patches import (
    MANIFEST,
    PATCHES,
    REPO_DIRS,
    Patch,
    all_patches,
    check_against,
    git_apply_check,
    rebuild,
)

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def manifest() -> dict[str, dict[str, object]]:
    entries = json.loads(MANIFEST.read_text())["patches"]
    return {e["patch"]: e for e in entries}


def test_every_patch_was_checked_against_the_upstream_it_names() -> None:
    recorded = manifest()
    patches = all_patches()
    assert {p.name for p in patches} == set(recorded) and len(patches) >= 2
    for p in patches:
        entry = recorded[p.name]
        assert (entry["repo"], entry["commit"], entry["path"]) == (p.repo, p.commit, p.path)
        assert p.repo in REPO_DIRS


def test_each_hunk_expects_the_lines_recorded_from_upstream() -> None:
    recorded = manifest()
    for p in all_patches():
        hunks = recorded[p.name]["hunks"]
        assert isinstance(hunks, list)
        assert [(h["old_start"], h["old_lines"], h["sha256"]) for h in hunks] == [
            (h.old_start, h.old_lines, h.digest()) for h in p.hunks
        ], f"{p.name} changed since it was checked against upstream: rerun the check"


def test_a_changed_context_line_no_longer_matches_upstream() -> None:
    p = all_patches()[0]
    first = p.hunks[0]
    edited = dataclasses.replace(first, before=(first.before[0] + " ", *first.before[1:]))
    assert edited.digest() != first.digest()


@needs_git
@pytest.mark.parametrize("patch", all_patches(), ids=lambda p: p.name)
def test_git_apply_accepts_the_patch_on_the_recorded_lines(tmp_path: Path, patch: Patch) -> None:
    target = rebuild(patch, tmp_path)
    done = git_apply_check(PATCHES / patch.name, tmp_path)
    assert done.returncode == 0, done.stderr
    subprocess.run(["git", "apply", str(PATCHES / patch.name)], cwd=tmp_path, check=True)
    text = target.read_text()
    for hunk in patch.hunks:
        assert "\n".join(hunk.after) in text


@needs_git
def test_git_apply_refuses_the_patch_where_upstream_differs(tmp_path: Path) -> None:
    patch = all_patches()[0]
    target = rebuild(patch, tmp_path)
    lines = target.read_text().splitlines()
    hunk = patch.hunks[0]
    changed = next(i for i, line in enumerate(hunk.before) if line.strip())
    lines[hunk.old_start - 1 + changed] += "  # edited upstream"
    target.write_text("\n".join(lines) + "\n")
    assert git_apply_check(PATCHES / patch.name, tmp_path).returncode != 0


def test_what_the_patches_import_exists() -> None:
    """The swapped imports keep MILES's and RLix's names: the call sites stay as they are."""
    for p in all_patches():
        for hunk in p.hunks:
            for line in hunk.after:
                m = re.match(r"from (offload_fsm[\w.]*) import (.+)$", line.strip())
                if m is None:
                    continue
                module = importlib.import_module(m[1])
                for name in (n.strip() for n in m[2].split(",")):
                    assert hasattr(module, name), f"{p.name}: {m[1]} has no {name}"


def test_the_rlix_patch_binds_the_gate_in_the_class_body() -> None:
    patch = next(p for p in all_patches() if p.repo == "rlops/rlix")
    added = [line for h in patch.hunks for line in h.after if line not in h.before]
    assert "    _wait_for_overlap_engines_offloaded = wait_for_overlap_engines_offloaded" in added
    gate_hunk = next(h for h in patch.hunks if any("= wait_for_overlap" in x for x in h.after))
    assert gate_hunk.after[-3].startswith("    def _before_training(")  # after RLix's method


UPSTREAM = os.environ.get("OFFLOAD_FSM_UPSTREAM")


@needs_git
@pytest.mark.skipif(UPSTREAM is None, reason="OFFLOAD_FSM_UPSTREAM names no upstream copies")
def test_against_the_real_upstream_files(tmp_path: Path) -> None:
    assert UPSTREAM is not None
    upstream = Path(UPSTREAM)
    assert check_against(upstream) == json.loads(MANIFEST.read_text())
    patch = next(p for p in all_patches() if p.repo == "rlops/rlix")
    tree = tmp_path / "rlix"
    shutil.copytree(upstream / REPO_DIRS[patch.repo], tree)
    subprocess.run(["git", "apply", str(PATCHES / patch.name)], cwd=tree, check=True)
    module = ast.parse((tree / patch.path).read_text())
    cls = next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "MilesPipeline")
    bindings = [
        n
        for n in cls.body
        if (isinstance(n, ast.FunctionDef) and n.name == "_wait_for_overlap_engines_offloaded")
        or (
            isinstance(n, ast.Assign)
            and any(
                isinstance(t, ast.Name) and t.id == "_wait_for_overlap_engines_offloaded"
                for t in n.targets
            )
        )
    ]
    assert isinstance(bindings[-1], ast.Assign)  # the last binding is the one called
