"""The CPU backend's setup: device count and the Eigen-convolutions flag, and when it is left out.

(That this jaxlib accepts the flag, which XLA would otherwise abort on, is exercised by every
command-line test: `dalle2_jax.train` and `dalle2_jax.sample` set it in their subprocesses.)
"""

import jax
import jaxlib
import pytest

from dalle2_jax.parallel import host_cpu


@pytest.fixture
def updates(monkeypatch):
    """The `jax.config.update` calls, recorded instead of made (this process's backend is up)."""
    calls = []
    monkeypatch.setattr(jax.config, "update", lambda name, value: calls.append((name, value)))
    return calls


def test_splits_the_cpu_and_adds_the_flag_to_the_users_flags(monkeypatch, updates):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    monkeypatch.setattr(jaxlib, "__version__", "0.10.2")
    host_cpu.configure_cpu_backend(3)
    assert updates == [("jax_num_cpu_devices", 3)]
    assert host_cpu.os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=8", host_cpu.CONVOLUTIONS_ON_EIGEN]


def test_zero_devices_means_one_per_core(monkeypatch, updates):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(host_cpu.os, "cpu_count", lambda: 5)
    host_cpu.configure_cpu_backend()
    assert updates == [("jax_num_cpu_devices", 5)]


@pytest.mark.parametrize("flags, version, batch_invariant", [
    ("--xla_cpu_experimental_ynn_fusion_type=+LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION", "0.10.2", False),
    ("", "0.11.0", False),  # a jaxlib the flag was not measured on (it might not know it, and abort)
    ("--xla_force_host_platform_device_count=8", "0.10.2", True),  # the sample command's inversions
])
def test_leaves_the_flag_out(monkeypatch, updates, flags, version, batch_invariant):
    monkeypatch.setenv("XLA_FLAGS", flags)
    monkeypatch.setattr(jaxlib, "__version__", version)
    host_cpu.configure_cpu_backend(2, batch_invariant=batch_invariant)
    assert host_cpu.os.environ["XLA_FLAGS"] == flags
