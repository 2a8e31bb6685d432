import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every test runs on asyncio and on trio (the fsm_world fixture works on both)."""
    return str(request.param)
