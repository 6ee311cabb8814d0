"""Multi-host: two processes on this machine (loopback coordinator, gloo CPU collectives, 4 CPU
devices each) train like one process with 8 devices, and each resumes the other's checkpoint.

The tiny CLIP with an FSDP mesh (data 2 x fsdp 4), so that parameters, optimizer state and
checkpoints are split over both processes, and a constant learning rate, so that runs of
different lengths share one schedule. One reference run in this process (8 devices) to step 6;
the two-process run (the real command line) resumes its step-2 checkpoint and trains to step 4;
this process resumes that step-4 checkpoint and trains to step 6. Both must match the reference.
Gloo collectives over 8 device threads on 2 cores starve when the machine is busy (this module's
two-process run took 17 minutes at a load of 9-14) but the two tests that need it took 58 s on
the idle 2-core machine, so they run by default, as the issue asks: CI runs on an idle machine.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dalle2_jax.data import pipeline
from dalle2_jax.parallel import distributed
from dalle2_jax.stages import make_stage
from dalle2_jax.training.loop import train_and_evaluate
from tests.tiny import ROOT, tiny_clip_config, tiny_clip_flags, tiny_unclip_flags

TIMEOUT_S = 900
FIELDS = {"train.checkpoint_every": 2, "train.log_every": 2, "train.keep_checkpoints": 5, "data.eval_limit": 16,
          "mesh.data": 2, "mesh.fsdp": 4, "optim.schedule": "constant"}


def train_here(data_dir, workdir, num_steps: int) -> dict:
    """Trains (or resumes) in this process on its 8 devices; returns the final parameters."""
    config = tiny_clip_config(data_dir, **FIELDS, **{"train.num_steps": num_steps})
    state, _ = train_and_evaluate(config, str(workdir), make_stage(config), devices=jax.devices())
    return jax.device_get(state.params)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_on_two_processes(data_dir, workdir, num_steps: int) -> list[str]:
    """The tiny CLIP's command line on two processes (4 CPU devices each); the logs."""
    flags = tiny_clip_flags(data_dir, **FIELDS, **{"train.num_steps": num_steps, "mesh.num_cpu_devices": 4})
    return run_on_two_processes(["--config=configs/shapes/clip.py", f"--workdir={workdir}", *flags])


def run_on_two_processes(args: list[str]) -> list[str]:
    """`python -m dalle2_jax.train ARGS`, started twice on a loopback coordinator; the logs."""
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": ROOT}
    base = [sys.executable, "-m", "dalle2_jax.train", *args,
            f"--coordinator_address=127.0.0.1:{free_port()}", "--num_processes=2"]
    processes = [subprocess.Popen([*base, f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        logs = [p.communicate(timeout=TIMEOUT_S)[1] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for i, (p, log) in enumerate(zip(processes, logs)):
        assert p.returncode == 0, f"process {i}: {log[-3000:]}"
    return logs


def params_at(workdir, step: int) -> dict:
    """A checkpoint's parameters as numpy arrays, whatever the devices that wrote it."""
    checkpointer = ocp.PyTreeCheckpointer()
    path = workdir / "checkpoints" / str(step) / "state"
    tree = checkpointer.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, restore_args=as_numpy)["params"]


def copy_checkpoint(source, target, step: int) -> None:
    shutil.copytree(source / "checkpoints" / str(step), target / "checkpoints" / str(step))


def assert_close(actual, expected):
    for (path, a), b in zip(jax.tree.leaves_with_path(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def reference(shapes_data_dir, tmp_path_factory):
    """(workdir, parameters at step 6) of the one-process run; it also generates the dataset, so
    that the two processes never wait for host 0 to make it."""
    workdir = tmp_path_factory.mktemp("one_process")
    return workdir, train_here(shapes_data_dir, workdir, 6)


@pytest.fixture(scope="module")
def two_processes(reference, shapes_data_dir, tmp_path_factory):
    """(workdir, logs) of the two-process run from the reference's step-2 checkpoint to step 4."""
    workdir = tmp_path_factory.mktemp("two_processes")
    copy_checkpoint(reference[0], workdir, 2)
    return workdir, train_on_two_processes(shapes_data_dir, workdir, 4)


def test_two_processes_resume_one_process_checkpoint_and_train_like_it(reference, two_processes):
    workdir, logs = two_processes
    for log in logs:
        assert "Joined the distributed runtime (flags)" in log
        assert "Resumed from the checkpoint of step 2" in log
    assert_close(params_at(workdir, 4), params_at(reference[0], 4))
    # Host 0 wrote config.json; each host wrote its data-iterator position.
    assert (workdir / "config.json").exists()
    data = sorted(p.name for p in (workdir / "checkpoints" / "4" / "data").glob("process_*"))
    assert data == ["process_0-of-2.json", "process_1-of-2.json"]


def test_one_process_resumes_two_process_checkpoint(reference, two_processes, shapes_data_dir, tmp_path):
    copy_checkpoint(two_processes[0], tmp_path, 4)
    params = train_here(shapes_data_dir, tmp_path, 6)
    assert_close(params, reference[1])
    # Something trained between the steps compared.
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(
        jax.tree.leaves(params), jax.tree.leaves(params_at(two_processes[0], 4))))


@pytest.mark.slow  # 3.5 minutes on the idle 2-core machine (8 beside a compile)
def test_main_job_on_two_processes_writes_one_report(reference, shapes_data_dir, tmp_path):
    """The tiny main job (every stage, then the samples) on two processes of 2 CPU devices each:
    host 0 alone writes the run's config, report and samples; the prior's embeddings written by
    host 0 are read by both after the barrier."""
    workdir = tmp_path / "unclip"
    logs = run_on_two_processes(["--config=configs/shapes/unclip.py", f"--workdir={workdir}",
                                 *tiny_unclip_flags(shapes_data_dir)])
    report = json.loads((workdir / "report.json").read_text())
    assert set(report) == {"clip", "prior", "decoder", "upsampler", "samples"}, logs[0][-2000:]
    assert all(report[stage]["final_eval"] for stage in ("clip", "prior", "decoder", "upsampler"))
    manifest = (workdir / "samples" / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == report["samples"]["seen/count"] + report["samples"]["heldout/count"]
    assert (workdir / "samples" / "grid.png").exists() and (workdir / "config.json").exists()
    for stage in ("clip", "prior", "decoder", "upsampler"):  # both hosts saved the final checkpoint
        final = workdir / stage / "checkpoints" / str(report[stage]["final_eval"]["step"]) / "data"
        assert sorted(p.name for p in final.glob("process_*")) == ["process_0-of-2.json", "process_1-of-2.json"]


@pytest.mark.parametrize("num_hosts", [2, 4])
def test_hosts_read_their_slices_of_the_same_global_batches(num_hosts, monkeypatch):
    """Host h's batches are the h-th slices of the global batches one host reads, also past an
    epoch (10 examples, global batch 4), and every host stands at the same position."""

    def batches(count: int, index: int, n: int = 6) -> tuple[list[np.ndarray], dict]:
        monkeypatch.setattr(jax, "process_count", lambda: count)
        monkeypatch.setattr(jax, "process_index", lambda: index)
        iterator = pipeline.train_iterator(list(range(10)), lambda x: x, 4, seed=3, num_threads=1, prefetch=2)
        return [next(iterator) for _ in range(n)], iterator.get_state()

    one_host, state = batches(1, 0)
    hosts = [batches(num_hosts, h) for h in range(num_hosts)]
    for k, expected in enumerate(one_host):
        np.testing.assert_array_equal(np.concatenate([h[0][k] for h in hosts]), expected)
    assert all(h[1] == state for h in hosts)
    assert sorted(np.concatenate(one_host)[:10].tolist()) == list(range(10))  # one epoch: every example once


@pytest.mark.parametrize("flags, message", [
    (distributed.Flags(num_processes=2), "--coordinator_address, --process_id missing"),
    (distributed.Flags("10.0.0.1", 2, 0), "expected HOST:PORT"),
    (distributed.Flags("10.0.0.1:1234", 0, 0), "--num_processes=0"),
    (distributed.Flags("10.0.0.1:1234", 2, 2), "--process_id=2: must be in [0, 2)"),
])
def test_inconsistent_flags_are_one_line_errors(flags, message):
    with pytest.raises(distributed.DistributedError) as error:
        distributed.check_flags(flags)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_single_process_does_not_initialise():
    assert distributed.initialize(distributed.Flags(), environ={}) == "single process"  # no TPU here
    assert distributed.initialize(distributed.Flags("127.0.0.1:1234", 1, 0)) == "single process"


def test_cluster_detection():
    def no_tpu():
        return 0

    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "16",
             "SLURM_PROCID": "3", "SLURM_LOCALID": "3"}
    assert distributed.detect_cluster(slurm, no_tpu) == "slurm"
    assert distributed.detect_cluster({**slurm, "SLURM_NTASKS": "1"}, no_tpu) is None
    assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "w-0,w-1", "TPU_WORKER_ID": "1"}, no_tpu) == "gke-tpu"
    assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "w-0"}, no_tpu) is None
    assert distributed.detect_cluster({}, lambda: 4) == "tpu-vm"
    assert distributed.detect_cluster({}, no_tpu) is None
    assert distributed.tpu_chips() == 0  # this machine has none
