"""The launchers' dry runs print exactly what they would run: the training command on every
worker, the worker count, the environment; bad input is one `error:` line. (No cloud here: the
real runs are not tested.)"""

from __future__ import annotations

import json
import shlex

import pytest

from launch import command, gke_jobset, slurm, tpu_vm

TRAIN = ["--config=configs/paper/prior_1b.py", "--workdir=gs://bucket/prior", "--config.data.name=my data"]
TRAIN_COMMAND = shlex.join(["python3", "-m", "dalle2_jax.train", *TRAIN])


def dry_run(module, argv: list[str], capsys) -> str:
    assert command.run_main(module.plan, [*argv, "--dry_run", "--", *TRAIN]) == 0
    return capsys.readouterr().out


def test_tpu_vm_runs_the_same_command_on_every_worker(capsys):
    out = dry_run(tpu_vm, ["--tpu=pod", "--zone=us-east5-a", "--project=p", "--env=TFDS_DATA_DIR=gs://b/tfds"], capsys)
    expected = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone", "us-east5-a", "--project", "p",
                "--worker=all", "--command", f"cd dalle2_jax && TFDS_DATA_DIR=gs://b/tfds {TRAIN_COMMAND}"]
    assert out == "$ " + shlex.join(expected) + "\n"


def test_tpu_vm_setup_ships_and_installs_the_code_first(capsys):
    lines = dry_run(tpu_vm, ["--tpu=pod", "--zone=z", "--setup"], capsys).splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"$ git -C {command.ROOT} archive")
    assert "tpu-vm scp /tmp/dalle2_jax.tar.gz pod:/tmp/dalle2_jax.tar.gz --zone z --worker=all" in lines[1]
    assert "pip install -e dalle2_jax" in lines[2] and "--worker=all" in lines[2]
    assert TRAIN_COMMAND in shlex.split(lines[3][2:])[-1]


def test_slurm_script_runs_one_task_per_gpu(capsys):
    out = dry_run(slurm, ["--nodes=4", "--gpus_per_node=8", "--partition=gpu", "--coordinator_port=5678",
                          "--venv=/shared/venv", "--env=XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true"],
                  capsys)
    script = out.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0].splitlines()
    assert script[0] == "#!/bin/bash"
    for directive in ("--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu"):
        assert f"#SBATCH {directive}" in script
    assert "source /shared/venv/bin/activate" in script
    assert "export JAX_COORDINATOR_PORT=5678" in script
    assert "export XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true" in script
    assert script[-1] == f"srun --kill-on-bad-exit=1 {TRAIN_COMMAND}"
    assert out.splitlines()[0] == "$ tee dalle2_jax.sbatch <<'EOF'"
    assert out.splitlines()[-1] == "$ sbatch dalle2_jax.sbatch"


@pytest.mark.parametrize("tpu, topology, workers", [("v5p", "4x4x4", 16), ("v4", "2x2x4", 4), ("v5e", "4x4", 4)])
def test_gke_jobset_has_one_pod_per_tpu_vm(tpu, topology, workers, capsys):
    out = dry_run(gke_jobset, ["--name=prior", "--image=gcr.io/p/dalle2:1", f"--tpu={tpu}",
                               f"--topology={topology}", "--env=TFDS_DATA_DIR=gs://b/tfds"], capsys)
    assert out.startswith("$ kubectl apply -f - <<'EOF'\n") and out.endswith("\nEOF\n")
    jobset = json.loads(out.split("<<'EOF'\n", 1)[1].rsplit("\nEOF\n", 1)[0])
    job = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["parallelism"] == job["completions"] == workers
    pod = job["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": gke_jobset.TPUS[tpu][0],
                                   "cloud.google.com/gke-tpu-topology": topology}
    container = pod["containers"][0]
    assert container["command"] == ["python3", "-m", "dalle2_jax.train", *TRAIN]
    assert container["env"] == [{"name": "TFDS_DATA_DIR", "value": "gs://b/tfds"}]
    assert container["resources"]["limits"]["google.com/tpu"] == 4


@pytest.mark.parametrize("module, argv, message", [
    (tpu_vm, ["--tpu=pod", "--zone=z", "--", "--config=c.py"], "need --workdir=..."),
    (tpu_vm, ["--tpu=pod", "--zone=z"], "the training flags go after `--`"),
    (tpu_vm, ["--tpu=pod", "--zone=z", "--", "--config=c.py", "--workdir=runs/x"], "--workdir='runs/x'"),
    (tpu_vm, ["--tpu=pod", "--zone=z", "--env=NOVALUE", "--", *TRAIN], "--env='NOVALUE': expected NAME=VALUE"),
    (slurm, ["--nodes=0", "--", *TRAIN], "--nodes=0: must be at least 1"),
    (gke_jobset, ["--name=Prior", "--image=i", "--tpu=v5p", "--topology=4x4x4", "--", *TRAIN], "--name='Prior'"),
    (gke_jobset, ["--name=p", "--image=i", "--tpu=v5p", "--topology=2x3x1", "--", *TRAIN], "6 chips"),
])
def test_bad_input_is_one_error_line(module, argv, message, capsys):
    assert command.run_main(module.plan, argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and message in captured.err and captured.err.count("\n") == 1
