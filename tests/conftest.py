"""Test setup: float32 everywhere, 8 simulated CPU devices for sharding tests, and the `oracle`
fixture (the Hugging Face reference)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def oracle():
    """The Hugging Face reference (`tests/hf_oracle.py`); skips the test when torch or transformers is
    missing, so only comparisons against the reference depend on them."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests import hf_oracle

    return hf_oracle
