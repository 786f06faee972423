import pytest


@pytest.fixture(scope="session")
def embedded_lm():
    """The embedded SmolLM2-135M-Instruct (converted from its GGUF once, then cached)."""
    from tempo_core import load_model
    return load_model()
