"""The generated docs match the code; the generator refuses undocumented kinds and fields."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from offload_fsm.commands import docgen
from offload_fsm.core.lifecycle import TABLE, State, mermaid
from offload_fsm.events import kinds as events

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("name", sorted(docgen.render_all()))
def test_committed_docs_match_the_generator(name: str) -> None:
    committed = (DOCS / name).read_text(encoding="utf-8")
    assert committed == docgen.render_all()[name], (
        f"docs/{name} is out of date: run `python -m offload_fsm.docgen`"
    )


def test_lifecycle_doc_holds_the_diagram_and_every_table_row() -> None:
    text = docgen.render_lifecycle()
    assert f"```mermaid\n{mermaid()}\n```" in text
    for (src, trigger), dsts in TABLE.items():
        row = f"| `{src.value}` | `{trigger.value}` | "
        assert row in text
        for dst in dsts:
            assert f"`{dst.value}`" in text.split(row, 1)[1].split("\n", 1)[0]
    for state in State:
        assert f"| `{state.value}` |" in text


def test_events_doc_has_every_kind_and_field_with_a_meaning() -> None:
    text = docgen.render_events()
    envelope = {f.name for f in dataclasses.fields(events.Event)}
    for cls in events.EVENT_TYPES:
        section = text.split(f"\n## {cls.kind}\n", 1)[1].split("\n## ", 1)[0]
        for field in dataclasses.fields(cls):
            if field.name in envelope:
                continue
            line = next(x for x in section.splitlines() if x.startswith(f"| `{field.name}` |"))
            meaning = line.rstrip(" |").rsplit("|", 1)[1].strip()
            assert meaning, f"{cls.kind}.{field.name} has no meaning"
    for name in envelope:
        assert f"| `{name}` |" in text


def test_check_mode_reports_stale_docs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert docgen.main(["--out", str(tmp_path), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert docgen.main(["--out", str(tmp_path)]) == 0
    assert docgen.main(["--out", str(tmp_path), "--check"]) == 0
    assert (tmp_path / "events.md").read_text() == docgen.render_events()


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[ModuleType]:
    """An events-like module with one documented and one undocumented kind."""
    source = textwrap.dedent(
        '''
        """Stand-in events."""
        from __future__ import annotations
        from dataclasses import dataclass
        from typing import ClassVar

        SCHEMA_VERSION = 1


        @dataclass(frozen=True, kw_only=True)
        class Event:
            """The envelope."""

            kind: ClassVar[str] = "event"
            seq: int  # sequence number
            # A comment above the field
            # spanning two lines.
            run_id: str = "r"


        @dataclass(frozen=True, kw_only=True)
        class Good(Event):
            """A documented kind."""

            kind: ClassVar[str] = "good"
            size: int | None = None  # bytes (None: unknown) | with a pipe


        @dataclass(frozen=True, kw_only=True)
        class Bad(Event):
            kind: ClassVar[str] = "bad"
            size: int


        EVENT_TYPES = (Good, Bad)
        '''
    )
    path = tmp_path / "stand_in_events.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("stand_in_events", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module while being built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_generator_names_every_undocumented_kind_and_field(stand_in: ModuleType) -> None:
    with pytest.raises(docgen.UndocumentedError) as info:
        docgen.render_events(stand_in)
    message = str(info.value)
    assert "Bad (docstring)" in message
    assert "Bad.size" in message
    assert "Good" not in message
    assert "Event" not in message


def test_field_meanings_come_from_comments_on_or_above_the_line(stand_in: ModuleType) -> None:
    fields = docgen.class_fields(stand_in)
    assert [(f.name, f.type, f.default, f.meaning) for f in fields["Event"]] == [
        ("seq", "int", None, "sequence number"),
        ("run_id", "str", "'r'", "A comment above the field spanning two lines."),
    ]
    assert fields["Good"] == [
        docgen.FieldDoc("size", "int | None", "None", "bytes (None: unknown) | with a pipe")
    ]
    stand_in.EVENT_TYPES = (stand_in.Good,)
    text = docgen.render_events(stand_in)
    assert "| `size` | `int \\| None` | `None` | bytes (None: unknown) \\| with a pipe |" in text
