"""Exact resume: a run killed with SIGKILL (or stopped by SIGTERM) and restarted ends with the
same parameters, bit for bit, as a run that was never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.tiny import ROOT, tiny_clip_flags

NUM_STEPS = 40


def command(workdir, data_dir) -> list[str]:
    flags = tiny_clip_flags(data_dir, **{"train.num_steps": NUM_STEPS, "train.checkpoint_every": 4,
                                         "train.log_every": 4, "data.eval_limit": 16,
                                         "mesh.num_cpu_devices": 2})
    return [sys.executable, "-m", "dalle2_jax.train", "--config=configs/shapes/clip.py",
            f"--workdir={workdir}", *flags]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return {**env, "PYTHONPATH": ROOT}


def run_to_end(workdir, data_dir) -> subprocess.CompletedProcess:
    result = subprocess.run(command(workdir, data_dir), cwd=ROOT, env=environment(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def final_params(workdir) -> dict:
    restored = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(NUM_STEPS) / "state")
    return restored["params"]


def interrupt(workdir, data_dir, signum: int) -> subprocess.Popen:
    """Starts a run and sends `signum` once its step-4 checkpoint is complete."""
    process = subprocess.Popen(command(workdir, data_dir), cwd=ROOT, env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (workdir / "checkpoints" / "4" / "_CHECKPOINT_METADATA").exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be interrupted"
    process.send_signal(signum)
    return process


@pytest.fixture(scope="module")
def uninterrupted(shapes_data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run_to_end(workdir, shapes_data_dir)
    return final_params(workdir)


def assert_identical(actual, expected):
    for (path, a), b in zip(jax.tree.leaves_with_path(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_sigkill_then_resume_is_bit_exact(uninterrupted, shapes_data_dir, tmp_path):
    process = interrupt(tmp_path, shapes_data_dir, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    killed_at = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert killed_at < NUM_STEPS
    result = run_to_end(tmp_path, shapes_data_dir)
    assert "Resumed from the checkpoint of step" in result.stderr
    assert_identical(final_params(tmp_path), uninterrupted)


def test_sigterm_saves_and_exits_cleanly_then_resumes(uninterrupted, shapes_data_dir, tmp_path):
    process = interrupt(tmp_path, shapes_data_dir, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert "Stopped by SIGTERM at step" in stderr
    stopped_at = int(stderr.split("Stopped by SIGTERM at step ")[1].split()[0])
    assert 4 <= stopped_at < NUM_STEPS
    assert (tmp_path / "checkpoints" / str(stopped_at) / "_CHECKPOINT_METADATA").exists()
    result = run_to_end(tmp_path, shapes_data_dir)
    assert f"Resumed from the checkpoint of step {stopped_at}" in result.stderr
    assert_identical(final_params(tmp_path), uninterrupted)
