"""The CPU backend's setup: the device count, the train step's Eigen-convolutions option and when
it is left out, and the restart that gives malloc huge pages."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import jaxlib
import pytest

from dalle2_jax.parallel import host_cpu


@pytest.fixture
def updates(monkeypatch):
    """The `jax.config.update` calls, recorded instead of made (this process's backend is up)."""
    calls = []
    monkeypatch.setattr(jax.config, "update", lambda name, value: calls.append((name, value)))
    return calls


def test_splits_the_cpu(updates):
    host_cpu.configure_cpu_backend(3)
    assert updates == [("jax_num_cpu_devices", 3)]


def test_zero_devices_means_one_per_core(monkeypatch, updates):
    monkeypatch.setattr(host_cpu.os, "cpu_count", lambda: 5)
    host_cpu.configure_cpu_backend()
    assert updates == [("jax_num_cpu_devices", 5)]


def test_training_on_the_cpu_gets_eigen_convolutions(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    monkeypatch.setattr(jaxlib, "__version__", "0.10.2")
    assert host_cpu.training_compiler_options("cpu") == host_cpu.TRAINING_OPTIONS


@pytest.mark.parametrize("platform, flags, version", [
    ("tpu", "", "0.10.2"),  # other backends keep their defaults (also when compiled from a CPU host)
    ("gpu", "", "0.10.2"),
    ("cpu", "--xla_cpu_experimental_ynn_fusion_type=+LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION", "0.10.2"),
    ("cpu", "", "0.11.0"),  # a jaxlib the option was not measured on (it might not know the value)
])
def test_leaves_the_option_out(monkeypatch, platform, flags, version):
    monkeypatch.setenv("XLA_FLAGS", flags)
    monkeypatch.setattr(jaxlib, "__version__", version)
    assert host_cpu.training_compiler_options(platform) is None


def ynnpack_ops(compiler_options) -> list[str]:
    """The ops a conv + dot program hands to YNNPACK when compiled with `compiler_options`."""
    def conv_then_dot(x, kernel, w):
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y @ w

    args = (jnp.ones((8, 16, 16, 64)), jnp.ones((3, 3, 64, 64)), jnp.ones((64, 64)))  # the decoder's sizes
    hlo = jax.jit(conv_then_dot, compiler_options=compiler_options).lower(*args).compile().as_text()
    # Each YNNPACK fusion calls a fused computation; list the op each of those computes.
    called = re.findall(r"%ynn_fusion\S* = .*calls=(%[\w.]+)", hlo)
    return sorted(re.search(rf"{re.escape(c)} .*?ROOT \S+ = \S+ (\w+)\(", hlo, re.S).group(1) for c in called)


@pytest.mark.skipif(not jaxlib.__version__.startswith(host_cpu.VERIFIED_JAXLIB), reason="jaxlib not verified")
def test_the_option_moves_only_the_convolutions_off_ynnpack():
    assert ynnpack_ops(None) == ["convolution", "dot"]  # jaxlib's default: both on YNNPACK
    assert ynnpack_ops(host_cpu.TRAINING_OPTIONS) == ["dot"]


@pytest.fixture
def linux_host(monkeypatch, tmp_path):
    """A host where the huge-page restart applies: glibc 2.36, THP in "madvise" mode, no tunables."""
    mode = tmp_path / "enabled"
    mode.write_text("always [madvise] never\n")
    monkeypatch.setattr(host_cpu, "THP_MODE_FILE", str(mode))
    monkeypatch.setattr(host_cpu.sys, "platform", "linux")
    monkeypatch.setattr(host_cpu.os, "confstr", lambda name: "glibc 2.36")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    return mode


def test_huge_page_malloc_is_asked_for(linux_host, monkeypatch):
    assert host_cpu.huge_page_malloc_environment()["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")  # the user's tunables are kept
    assert (host_cpu.huge_page_malloc_environment()["GLIBC_TUNABLES"]
            == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")


@pytest.mark.parametrize("what, value", [
    ("tunables", "glibc.malloc.hugetlb=0"),  # the user's choice (or the restarted process)
    ("thp", "[always] madvise never"),  # nothing to gain
    ("thp", "always madvise [never]"),  # nothing to get
    ("libc", "glibc 2.34"),  # no such tunable
    ("libc", ""),  # not glibc
])
def test_huge_page_malloc_is_left_alone(linux_host, monkeypatch, what, value):
    if what == "tunables":
        monkeypatch.setenv("GLIBC_TUNABLES", value)
    elif what == "thp":
        linux_host.write_text(value)
    else:
        monkeypatch.setattr(host_cpu.os, "confstr", lambda name: value)
    assert host_cpu.huge_page_malloc_environment() is None


@pytest.mark.skipif(host_cpu.huge_page_malloc_environment() is None,
                    reason="this host gets no huge-page restart (see huge_page_malloc_environment)")
def test_the_restart_runs_the_same_command_with_the_tunable():
    code = ("import os, sys; from dalle2_jax.parallel import host_cpu; "
            "print(os.getpid(), flush=True); host_cpu.restart_with_huge_page_malloc(); "
            "print(os.getpid(), os.environ['GLIBC_TUNABLES'], sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    lines = subprocess.run([sys.executable, "-c", code, "an-argument"], env=env, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    pid = lines[0]  # printed again by the restarted process, which keeps the process id
    assert lines == [pid, pid, f"{pid} glibc.malloc.hugetlb=1 ['an-argument']"]
