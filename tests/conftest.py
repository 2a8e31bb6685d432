from __future__ import annotations

import pytest

from offload_fsm.timing.idle import BACKEND_OPTIONS
from tests.fake_smi import no_smi, smi  # noqa: F401  (fixtures for the compat tests)

# asyncio with a loop whose idle moments virtual time sees at once (offload_fsm.timing.idle).
ASYNCIO = ("asyncio", BACKEND_OPTIONS)


@pytest.fixture(params=[ASYNCIO, "trio"], ids=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """Every async test runs on asyncio and on trio."""
    return request.param
