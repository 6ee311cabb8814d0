"""Multi-stage runs: the main job's config, stage order, skipping finished stages, the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from dalle2_jax import config_schema, multistage
from tests.tiny import ROOT, TINY_CLIP_OVERRIDES, load_config

TINY_PRIOR_OVERRIDES = {
    "model.width": 16, "model.depth": 1, "model.num_heads": 2, "data.batch_size": 16,
    "data.eval_batch_size": 16, "data.num_threads": 1, "sampling.num_steps": 4, "prior.eval_limit": 16,
    "train.num_steps": 3, "train.log_every": 1, "train.eval_every": 100, "train.checkpoint_every": 100,
}


def test_main_job_config_resolves_and_validates(tmp_path):
    config = load_config("configs/shapes/unclip.py")
    stages = multistage.stage_configs(config, str(tmp_path))
    assert [name for name, _ in stages] == ["clip", "prior"]
    assert stages[1][1].clip.workdir == f"{tmp_path}/clip"
    assert config.prior.clip.workdir == "{workdir}/clip"  # the config itself is left as written
    for _, stage_config in stages:
        config_schema.validate(stage_config, num_devices=2, num_processes=1)


def test_run_skips_finished_stages_and_reports(tmp_path):
    config = load_config("configs/shapes/unclip.py")
    trained = []

    def fake_train(stage_config, workdir):
        trained.append(stage_config.stage)
        path = multistage.epath.Path(workdir)
        (path / "checkpoints" / str(stage_config.train.num_steps)).mkdir(parents=True)
        (path / "checkpoints" / str(stage_config.train.num_steps) / "_CHECKPOINT_METADATA").write_text("{}")
        (path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "eval/x": 0.5}\n')
        return {"eval/x": 0.5}

    report = multistage.run(config, str(tmp_path), fake_train)
    assert trained == ["clip", "prior"]
    assert report["prior"]["final_eval"] == {"step": 2, "eval/x": 0.5}
    multistage.run(config, str(tmp_path), fake_train)
    assert trained == ["clip", "prior"]  # nothing trained twice
    assert json.loads((tmp_path / "report.json").read_text())["clip"]["final_eval"]["eval/x"] == 0.5


def test_main_job_command_runs_every_stage(shapes_data_dir, tmp_path):
    flags = [f"--config.clip.{k}={v}" for k, v in TINY_CLIP_OVERRIDES.items()]
    flags += [f"--config.prior.{k}={v}" for k, v in TINY_PRIOR_OVERRIDES.items()]
    for stage in ("clip", "prior"):
        flags += [f"--config.{stage}.data.{k}={v}" for k, v in (
            ("data_dir", shapes_data_dir), ("train_size", 256), ("validation_size", 64), ("heldout_size", 64))]
        flags.append(f"--config.{stage}.mesh.num_cpu_devices=2")
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": ROOT}
    command = [sys.executable, "-m", "dalle2_jax.train", "--config=configs/shapes/unclip.py",
               f"--workdir={tmp_path}", *flags]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) == {"clip", "prior"}
    assert "eval/validation/zero_shot_top1" in report["clip"]["final_eval"]
    assert "eval/validation/cosine_prior" in report["prior"]["final_eval"]
    assert (tmp_path / "clip" / "embeddings" / "train" / "done.json").exists()
    # Rerunning skips both stages.
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert again.stderr.count("finished earlier") == 2
