"""docs/migrating.md names only things that exist: the swapped imports, the options and their
values, the patch files, the event kinds, fields, report contexts and lifecycle steps."""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

from offload_fsm.compat import rlix
from offload_fsm.compat.rlix_gate import OverlapGateOptions
from offload_fsm.core.lifecycle import TABLE, State
from offload_fsm.events.kinds import KINDS, AttributionReport

DOC = Path(__file__).resolve().parents[1] / "docs" / "migrating.md"
TEXT = DOC.read_text()


def section(title: str) -> str:
    return TEXT.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in r.strip("|").split(" | ")] for r in rows[2:]]


def test_every_swapped_name_is_importable() -> None:
    for line in re.findall(r"`from (offload_fsm[\w.]*) import ([^`]+)`", TEXT):
        module = importlib.import_module(line[0])
        for name in line[1].split(","):
            name = name.strip()
            assert name == "..." or hasattr(module, name), f"{line[0]} lacks {name}"
    for name in re.findall(r"`offload_fsm\.compat\.rlix\.(\w+)", TEXT):
        assert hasattr(rlix, name)
    upstream = re.findall(r"`from miles\.utils\.gpu_probe import ([^`]+)`", TEXT)[0]
    miles = importlib.import_module("offload_fsm.compat.miles")
    assert all(hasattr(miles, n.strip()) for n in upstream.split(","))


def test_the_patch_files_it_names_exist() -> None:
    for name in re.findall(r"docs/patches/([\w.-]+\.patch)", TEXT):
        assert (DOC.parent / "patches" / name).is_file(), name


def test_every_option_it_names_takes_the_value_it_names() -> None:
    fields = {f.name for f in dataclasses.fields(OverlapGateOptions)}
    named = re.findall(r"(\w+)=(\"\w+\"|\d+)", section("Step 1: swap the imports"))
    assert {"settle_samples", "on_timeout", "on_unmeasurable"} <= {n for n, _ in named}
    for name, value in named:
        if name == "pid_namespace":
            continue  # compat.miles's keyword, tested there
        assert name in fields
        OverlapGateOptions(**{name: value.strip('"') if value.startswith('"') else int(value)})
    rlix_row = dataclasses.replace(
        rlix.RLIX_BEHAVIOUR, backend=None, recorder=None, engine_states=None
    )
    assert rlix_row == OverlapGateOptions(
        settle_samples=1, on_unmeasurable="grace", on_timeout="warn"
    )


def test_every_event_it_names_is_a_kind_with_those_fields() -> None:
    rows = table_rows(section("Step 2: the orchestrator, and events instead of log lines"))
    assert len(rows) >= 6
    report_fields = {f.name for f in dataclasses.fields(AttributionReport)}
    for _line, events in rows:
        tokens = re.findall(r"`([^`]+)`", events)
        kinds = [t for t in tokens if t in KINDS]
        assert kinds, f"no event kind in {events!r}"
        for token in tokens:
            field = token.split(":")[0]
            ok = (
                token in KINDS
                or field in report_fields
                or any(field in {f.name for f in dataclasses.fields(KINDS[k])} for k in kinds)
                or token.startswith(("release_memory", "resume_memory"))
                or re.fullmatch(r"\w+ -> \w+", token) is not None
            )
            assert ok, f"{token!r} is neither a kind, a field nor a transition"
    for src, dst in re.findall(r"`(\w+) -> (\w+)`", section("Step 2: the orchestrator")):
        assert any(s.value == src and dst in {d.value for d in ds} for (s, _), ds in TABLE.items())
        assert State(src) and State(dst)


def test_the_report_contexts_it_names_are_the_orchestrators() -> None:
    source = (
        Path(__file__).resolve().parents[1] / "offload_fsm" / "orchestrator" / "orchestrator.py"
    ).read_text()
    contexts = re.findall(r'`context: "(\w+)"`', TEXT)
    assert {"after_release", "wake_timeout"} <= set(contexts)
    for context in contexts:
        gate, _, suffix = context.partition("_")
        made_by_gate = suffix == "timeout" and gate in ("wake", "release", "resume")
        assert f'"{context}"' in source or (
            made_by_gate and 'f"{condition.gate}_timeout"' in source
        ), context
