from __future__ import annotations

import pytest

from tests.fake_smi import no_smi, smi  # noqa: F401  (fixtures for the compat tests)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    return str(request.param)
