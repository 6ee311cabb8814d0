"""Multi-stage runs: the main job's config, stage order, skipping finished stages, the report."""

from __future__ import annotations

import json
import subprocess

from dalle2_jax import config_schema, multistage
from tests.tiny import ROOT, load_config


def test_main_job_config_resolves_and_validates(tmp_path):
    config = load_config("configs/shapes/unclip.py")
    stages = multistage.stage_configs(config, str(tmp_path))
    assert [name for name, _ in stages] == ["clip", "prior", "decoder", "upsampler"]
    assert stages[1][1].clip.workdir == stages[2][1].clip.workdir == f"{tmp_path}/clip"
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
    assert trained == ["clip", "prior", "decoder", "upsampler"]
    assert report["prior"]["final_eval"] == {"step": 2, "eval/x": 0.5}
    multistage.run(config, str(tmp_path), fake_train)
    assert trained == ["clip", "prior", "decoder", "upsampler"]  # nothing trained twice
    assert json.loads((tmp_path / "report.json").read_text())["clip"]["final_eval"]["eval/x"] == 0.5


def test_main_job_command_runs_every_stage(unclip_run):
    workdir, _, command, env = unclip_run
    report = json.loads((workdir / "report.json").read_text())
    assert set(report) == {"clip", "prior", "decoder", "upsampler", "samples"}
    assert "eval/validation/zero_shot_top1" in report["clip"]["final_eval"]
    assert "eval/validation/cosine_prior" in report["prior"]["final_eval"]
    assert "eval/validation/attribute_all" in report["decoder"]["final_eval"]
    assert "eval/heldout/psnr" in report["upsampler"]["final_eval"]
    assert (workdir / "clip" / "embeddings" / "train" / "done.json").exists()
    # The final text-to-image evaluation: 64 px images, scored per group, written with a manifest.
    samples = report["samples"]
    assert samples["image_size"] == 64 and samples["seen/count"] == 4 and samples["heldout/count"] == 2
    assert 0.0 <= samples["seen/all"] <= samples["seen/color"] <= 1.0
    manifest = [json.loads(line) for line in (workdir / "samples" / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 6 and manifest[0]["png"] == "0000.png" and "prompt" in manifest[0]
    assert (workdir / "samples" / "grid.png").exists()
    # Sample grids of the decoder and upsampler evaluations.
    assert list((workdir / "decoder" / "samples").glob("validation_source_and_decoded_*.png"))
    assert list((workdir / "upsampler" / "samples").glob("heldout_low_upsampled_true_*.png"))
    # Rerunning skips every stage.
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert again.stderr.count("finished earlier") == 4
