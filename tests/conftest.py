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
# The tests compare float32 computations to 1e-5: full-precision matmuls on GPU too, where JAX's
# default is TF32 (a 10-bit mantissa; seen failing there). CPU matmuls are float32 either way.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory) -> str:
    """One small shapes dataset directory shared by every test of the session."""
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def unclip_run(shapes_data_dir, tmp_path_factory):
    """The main job's command on tiny stages (all four, then the samples), run once per session:
    (workdir, the first run's CompletedProcess, the command)."""
    import subprocess

    from tests.tiny import tiny_unclip_flags

    workdir = tmp_path_factory.mktemp("unclip")
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": ROOT}
    command = [sys.executable, "-m", "dalle2_jax.train", "--config=configs/shapes/unclip.py",
               f"--workdir={workdir}", *tiny_unclip_flags(shapes_data_dir)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result, command, env


@pytest.fixture(scope="session")
def clip_workdir(shapes_data_dir, tmp_path_factory) -> str:
    """A finished tiny CLIP run (2 steps) for the stages that condition on CLIP."""
    from dalle2_jax.stages import make_stage
    from dalle2_jax.training.loop import train_and_evaluate
    from tests.tiny import tiny_clip_config

    workdir = tmp_path_factory.mktemp("clip")
    config = tiny_clip_config(shapes_data_dir, **{"train.num_steps": 2, "data.eval_limit": 16})
    train_and_evaluate(config, str(workdir), make_stage(config))
    (workdir / "config.json").write_text(config.to_json())
    return str(workdir)
