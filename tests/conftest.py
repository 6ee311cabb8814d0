"""Test setup: 8 simulated CPU devices and a persistent compilation cache.

XLA_FLAGS must be set before JAX is imported anywhere, which is why it happens here at import
time. Subprocess tests inherit the environment (the CLI itself splits the CPU by
`mesh.num_cpu_devices`).
"""

import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "dalle2_jax_test_jit_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory) -> str:
    """One small shapes dataset directory shared by every test of the session."""
    return str(tmp_path_factory.mktemp("tfds"))
