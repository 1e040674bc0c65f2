"""The parity tests run in the reference environment (.venv-ref: PyTorch's CPU build and Hugging
Face transformers next to course_lib), which `make test-reference` creates and uses."""

import pytest

try:
    import tokenizers  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
except ImportError as e:
    raise pytest.UsageError(
        f"tests_reference/ needs PyTorch, transformers and tokenizers ({e}). Run "
        "`make test-reference`, which installs them into .venv-ref and runs these tests there."
    ) from None


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers():
    """transformers warns about the tiny test configs (ids beyond the vocabulary, etc.)."""
    transformers.logging.set_verbosity_error()
