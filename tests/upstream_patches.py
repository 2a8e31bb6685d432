"""The integration patches under docs/patches/ against the upstream files they name.

Upstream code is not stored in this repository, so the check has two halves:

- With local copies of the upstream files (``--upstream DIR``, or ``OFFLOAD_FSM_UPSTREAM`` in
  the tests): ``git apply --check`` against each real file, and the SHA-256 of the lines each
  hunk expects (its context and removed lines) at the line it names. ``--write`` records them
  in ``tests/fixtures/upstream_patches.json``. DIR holds ``miles/`` and ``rlix/``: checkouts
  (or copies of the named files) of rlops/miles and rlops/rlix at the commits the patches name.
- Offline (CI): each hunk's expected lines must still hash to what was recorded from the real
  file, and ``git apply --check`` must accept the patch on a file rebuilt from those lines
  at their recorded places (every other line a placeholder).

    python -m tests.upstream_patches --upstream /path/to/upstream [--write]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATCHES = ROOT / "docs" / "patches"
MANIFEST = ROOT / "tests" / "fixtures" / "upstream_patches.json"
REPO_DIRS = {"rlops/miles": "miles", "rlops/rlix": "rlix"}

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass(frozen=True)
class Hunk:
    old_start: int
    old_lines: int
    before: tuple[str, ...]  # the lines the hunk expects (context and removed)
    after: tuple[str, ...]  # the lines it leaves (context and added)

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.before).encode()).hexdigest()


@dataclass(frozen=True)
class Patch:
    name: str
    repo: str
    commit: str
    path: str
    hunks: tuple[Hunk, ...]


def parse_patch(file: Path) -> Patch:
    """One single-file patch with its ``Upstream:`` and ``File:`` header lines."""
    text = file.read_text(encoding="utf-8")
    head = re.search(r"^Upstream:\s+(\S+)\s+([0-9a-f]{40})", text, re.M)
    path = re.search(r"^File:\s+(\S+)", text, re.M)
    if head is None or path is None:
        raise ValueError(f"{file.name}: no 'Upstream: owner/repo <commit>' and 'File:' lines")
    diffs = re.findall(r"^diff --git a/(\S+) b/(\S+)$", text, re.M)
    if diffs != [(path[1], path[1])]:
        raise ValueError(f"{file.name}: patches {diffs}, not exactly its File: {path[1]}")
    hunks: list[Hunk] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _HUNK.match(lines[i])
        i += 1
        if m is None:
            continue
        old_lines = int(m[2] or "1")
        new_lines = int(m[4] or "1")
        before: list[str] = []
        after: list[str] = []
        while len(before) < old_lines or len(after) < new_lines:
            line = lines[i]
            i += 1
            tag, body = line[:1], line[1:]
            if tag in (" ", ""):
                before.append(body)
                after.append(body)
            elif tag == "-":
                before.append(body)
            elif tag == "+":
                after.append(body)
            else:
                raise ValueError(f"{file.name}: unexpected line in a hunk: {line!r}")
        hunks.append(Hunk(int(m[1]), old_lines, tuple(before), tuple(after)))
    if not hunks:
        raise ValueError(f"{file.name}: no hunks")
    return Patch(file.name, head[1], head[2], path[1], tuple(hunks))


def all_patches() -> list[Patch]:
    return [parse_patch(f) for f in sorted(PATCHES.glob("*.patch"))]


def git_apply_check(patch_file: Path, tree: Path) -> subprocess.CompletedProcess[str]:
    """``git apply --check`` of ``patch_file`` in ``tree`` (a checkout or plain directory)."""
    return subprocess.run(
        ["git", "apply", "--check", "-v", str(patch_file)],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )


def rebuild(patch: Patch, dest: Path) -> Path:
    """A stand-in for the upstream file under ``dest``: each hunk's expected lines at the line
    it names, a placeholder on every other line. Returns the file's path."""
    end = max(h.old_start + h.old_lines for h in patch.hunks) + 3
    lines = [f"# upstream line {n} (not stored)" for n in range(1, end + 1)]
    for h in patch.hunks:
        lines[h.old_start - 1 : h.old_start - 1 + h.old_lines] = h.before
    target = dest / patch.path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def upstream_digests(patch: Patch, file: Path) -> list[str]:
    """The SHA-256 of the real file's lines where each hunk expects its lines."""
    lines = file.read_text(encoding="utf-8").splitlines()
    return [
        hashlib.sha256(
            "\n".join(lines[h.old_start - 1 : h.old_start - 1 + h.old_lines]).encode()
        ).hexdigest()
        for h in patch.hunks
    ]


def check_against(upstream: Path) -> dict[str, object]:
    """Check every patch against the real files under ``upstream``; the manifest they give."""
    entries = []
    for patch in all_patches():
        tree = upstream / REPO_DIRS[patch.repo]
        done = git_apply_check(PATCHES / patch.name, tree)
        if done.returncode != 0:
            raise SystemExit(f"{patch.name} does not apply in {tree}:\n{done.stderr}")
        real = upstream_digests(patch, tree / patch.path)
        mine = [h.digest() for h in patch.hunks]
        if real != mine:
            raise SystemExit(f"{patch.name}: a hunk's lines are not at the line it names")
        source = (tree / "SOURCE.txt").read_text().strip() if (tree / "SOURCE.txt").exists() else ""
        entries.append(
            {
                "patch": patch.name,
                "repo": patch.repo,
                "commit": patch.commit,
                "path": patch.path,
                "checked_against": source or "the full file at that commit",
                "hunks": [
                    {"old_start": h.old_start, "old_lines": h.old_lines, "sha256": d}
                    for h, d in zip(patch.hunks, real)
                ],
            }
        )
    return {"patches": entries}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", type=Path, required=True)
    parser.add_argument("--write", action="store_true", help=f"write {MANIFEST.name}")
    args = parser.parse_args(argv)
    manifest = check_against(args.upstream)
    if args.write:
        MANIFEST.parent.mkdir(parents=True, exist_ok=True)
        MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"wrote {MANIFEST.relative_to(ROOT)}")
    elif json.loads(MANIFEST.read_text()) != manifest:
        print(f"{MANIFEST.relative_to(ROOT)} is out of date: run with --write")
        return 1
    print(f"{len(manifest['patches'])} patch(es) apply to {args.upstream}")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
