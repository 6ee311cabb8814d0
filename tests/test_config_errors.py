"""Bad configs fail before anything compiles, with one line naming the field."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dalle2_jax import config_schema
from dalle2_jax.parallel.mesh import ConfigError
from dalle2_jax.stages import make_stage
from dalle2_jax.train import UsageError, check_workdir_config
from tests.tiny import ROOT, load_config, tiny_clip_config


def run_train(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "dalle2_jax.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_unknown_field_on_the_command_line(tmp_path):
    result = run_train("--config=configs/shapes/clip.py", f"--workdir={tmp_path}",
                       "--config.model.vision.widht=3")
    assert result.returncode != 0
    assert "widht" in last_line(result) and "width" in last_line(result)
    assert last_line(result).startswith("error:")


def test_missing_config_file(tmp_path):
    result = run_train("--config=configs/shapes/nope.py", f"--workdir={tmp_path}")
    assert result.returncode != 0
    assert last_line(result) == "error: --config=configs/shapes/nope.py: no such file"


def test_bad_value_names_the_field_from_the_command_line(tmp_path):
    result = run_train("--config=configs/shapes/clip.py", f"--workdir={tmp_path}",
                       "--config.data.batch_size=7", "--config.mesh.num_cpu_devices=2")
    assert result.returncode != 0
    assert last_line(result).startswith("error: data.batch_size=7 is not divisible")
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_field_in_a_config_file():
    config = load_config("configs/shapes/clip.py")
    with pytest.raises(AttributeError, match="widht"):
        config.model.vision.widht = 3


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("data.batch_size", 12, r"data.batch_size=12 is not divisible by the data-parallel size 8"),
        ("mesh.data", 16, r"mesh.data: the mesh .* needs 16 devices but 8 are present"),
        ("mesh.fsdp", 3, r"mesh.data=-1: the other axes multiply to 3"),
        ("model.vision.patch_size", 5, r"model.vision.patch_size=5 does not divide .*data.resolution=32"),
        ("model.text.num_heads", 3, r"model.text.num_heads=3 must divide model.text.width=128"),
        ("train.grad_accum_steps", 3, r"train.grad_accum_steps=3"),
        ("train.profile_steps", 5000, r"train.profile_from_step=20 \+ train.profile_steps=5000 is past"),
        ("train.profile_steps", -1, r"train.profile_steps=-1: must be a positive integer"),
        ("dtype", "float8", r"dtype='float8'"),
        ("stage", "painter", r"stage='painter'"),
    ],
)
def test_validation_names_the_field(field, value, message):
    config = load_config("configs/shapes/clip.py")
    section = config
    *parents, name = field.split(".")
    for parent in parents:
        section = section[parent]
    section[name] = value
    with pytest.raises(ConfigError, match=message) as error:
        config_schema.validate(config, num_devices=8, num_processes=1)
    assert "\n" not in str(error.value)


def test_missing_dataset_names_the_field(tmp_path):
    config = tiny_clip_config(str(tmp_path), **{"data.name": "no_such_dataset_xyz"})
    with pytest.raises(ValueError, match="data.name='no_such_dataset_xyz'"):
        make_stage(config)


def test_resume_refuses_a_different_experiment():
    saved = '{"model": {"width": 8}, "train": {"num_steps": 10}}'
    assert check_workdir_config(saved, '{"model": {"width": 8}, "train": {"num_steps": 20}}') == ["train.num_steps"]
    with pytest.raises(UsageError, match=r"config.model.width=16 differs from 8"):
        check_workdir_config(saved, '{"model": {"width": 16}, "train": {"num_steps": 10}}')
    # How samples are drawn may change (a finished run is re-evaluated with other settings).
    sampled = '{"model": {"width": 8}, "train": {"num_steps": 10}, "sampling": {"guidance_scale": 3.0}}'
    # A field added to the schema since the run started, at the value that reproduces the run.
    assert check_workdir_config(saved, '{"model": {"width": 8}, "train": {"num_steps": 10}, '
                                       '"clip": {"pretrained": ""}}') == []
    with pytest.raises(UsageError, match=r"config.clip.pretrained='d' differs from None"):
        check_workdir_config(saved, '{"model": {"width": 8}, "train": {"num_steps": 10}, "clip": {"pretrained": "d"}}')
    assert check_workdir_config(saved[:-1] + ', "sampling": {"guidance_scale": 1.0}}', sampled) == [
        "sampling.guidance_scale"]
