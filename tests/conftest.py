import jax
import pytest


@pytest.fixture(autouse=True)
def strict_rank_promotion():
    """Fail on silent broadcasting between arrays of different rank (Equinox's habit)."""
    with jax.numpy_rank_promotion("raise"):
        yield
