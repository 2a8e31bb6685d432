"""The dependency ranges, the lock and the compatibility page say the same thing.

``pyproject.toml`` declares ranges; ``requirements.lock.txt`` pins what CI installs (for every
supported Python); docs/compatibility.md records the floors that ``tasks.py test --lowest``
installed. A floor moved in one place and not the others fails here.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines.extend(extra)
    return [Requirement(line) for line in lines]


def lock_pins() -> list[Requirement]:
    """The lock's ``name==version ; marker`` lines (comments and ``# via`` lines skipped)."""
    lines = (ROOT / "requirements.lock.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line and not line.startswith((" ", "#"))]


def environment(python: str) -> dict[str, str]:
    env = dict(default_environment())
    env.update(
        python_version=python,
        python_full_version=f"{python}.0",
        sys_platform="linux",
        platform_system="Linux",
        os_name="posix",
        implementation_name="cpython",
        platform_python_implementation="CPython",
    )
    return env


def pinned_version(pins: list[Requirement], name: str, env: dict[str, str]) -> Version | None:
    found = [
        Version(next(iter(pin.specifier)).version)
        for pin in pins
        if canonicalize_name(pin.name) == canonicalize_name(name)
        and (pin.marker is None or pin.marker.evaluate(env))
    ]
    assert len(found) <= 1, (name, env["python_version"], found)
    return found[0] if found else None


def test_every_lock_line_is_an_exact_pin() -> None:
    pins = lock_pins()
    assert len(pins) > 20
    for pin in pins:
        (spec,) = pin.specifier
        assert spec.operator == "==", pin


@pytest.mark.parametrize("python", SUPPORTED_PYTHONS)
def test_the_lock_pins_every_declared_dependency_within_its_range(python: str) -> None:
    pins, env = lock_pins(), environment(python)
    for req in declared():
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        version = pinned_version(pins, req.name, env)
        assert version is not None, f"{req.name} is not pinned for Python {python}"
        assert req.specifier.contains(version, prereleases=True), (str(req), str(version))


def documented_floors() -> dict[str, str]:
    """docs/compatibility.md's table: ``| package | lowest tested | ... |``."""
    text = (ROOT / "docs" / "compatibility.md").read_text()
    section = text.split("## Tested versions", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| ([^ |]+) \|", section, flags=re.MULTILINE)
    return {canonicalize_name(name): lowest for name, lowest in rows}


def test_each_floor_is_the_version_the_lowest_run_installed() -> None:
    floors = documented_floors()
    for req in declared():
        bounds = [spec for spec in req.specifier if spec.operator in (">=", "==")]
        if not bounds:
            continue
        name = canonicalize_name(req.name)
        assert name in floors, f"{req.name} is missing from docs/compatibility.md"
        assert Version(floors[name]) == Version(bounds[0].version), (str(req), floors[name])
