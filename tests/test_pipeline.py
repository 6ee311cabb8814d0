"""The generation pipeline and the sample command on the tiny main-job run (see conftest.unclip_run)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from dalle2_jax.parallel.mesh import ConfigError
from dalle2_jax.pipeline import Pipeline, slerp
from tests.tiny import ROOT

PROMPTS = ["a large red circle in the center on a white background",
           "a small blue square on the left on a black background",
           "a large yellow triangle at the top on a gray background"]


@pytest.fixture(scope="module")
def pipeline(unclip_run):
    return Pipeline(str(unclip_run[0]), batch_size=8)


def test_slerp_endpoints_and_unit_norm():
    a, b = jnp.array([[1.0, 0.0, 0.0]]), jnp.array([[0.0, 1.0, 0.0]])
    out = np.asarray(slerp(a, b, jnp.array([0.0, 0.5, 1.0])))
    np.testing.assert_allclose(out[0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(out[2], [0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(out[1], [np.sqrt(0.5), np.sqrt(0.5), 0], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-6)
    same = np.asarray(slerp(a, a, jnp.array([0.3])))  # parallel inputs: no division by sin(0)
    np.testing.assert_allclose(same[0], [1, 0, 0], atol=1e-6)


def test_text_to_image_is_reproducible_from_prompt_and_seed(pipeline):
    pictures = pipeline.text_to_image(PROMPTS, [5, 6, 7])
    assert pictures.shape == (3, 64, 64, 3) and pictures.dtype == np.uint8
    alone = pipeline.text_to_image([PROMPTS[1]], [6])  # same prompt and seed in another batch
    np.testing.assert_array_equal(alone[0], pictures[1])
    other_seed = pipeline.text_to_image([PROMPTS[1]], [99])
    assert not np.array_equal(other_seed[0], pictures[1])


def test_manipulations_produce_images(pipeline):
    source = pipeline.text_to_image(PROMPTS[:2], [0, 1])
    a, b = (pipeline.input_image(x) for x in source)
    variations = pipeline.variations(a, [1, 2, 3], eta=1.0)
    assert variations.shape == (3, 64, 64, 3)
    assert not np.array_equal(variations[0], variations[1])
    assert pipeline.variations(a, [1, 2], eta=0.5, from_inverted=True).shape == (2, 64, 64, 3)
    for latent in ("inverted", "fixed"):
        assert pipeline.interpolate(a, b, [0.0, 0.5, 1.0], seed=0, latent=latent).shape == (3, 64, 64, 3)
    diffs = pipeline.text_diff(a, PROMPTS[0], PROMPTS[0].replace("red", "blue"), [0.0, 0.25], seed=0)
    assert diffs.shape == (2, 64, 64, 3)
    captioned = pipeline.text_diff(a, PROMPTS[0], PROMPTS[0].replace("red", "blue"), [0.0, 0.25], seed=0,
                                   with_captions=True)
    assert captioned.shape == (2, 64, 64, 3) and not np.array_equal(captioned, diffs)
    with pytest.raises(ValueError, match="latent='slerped'"):
        pipeline.interpolate(a, b, [0.0], seed=0, latent="slerped")


def test_manipulations_decode_at_the_runs_eta(pipeline, unclip_run, tmp_path):
    # The main job's decoder config sets its own DDIM noise for the manipulations, and decodes them
    # unguided where text to image is guided.
    assert (pipeline.variation_eta, pipeline.text_diff_eta) == (1.0, 0.9)
    assert pipeline.manipulation_guidance_scale == 1.0 != pipeline.sampling["decoder"].guidance_scale
    source = pipeline.input_image(pipeline.text_to_image(PROMPTS[:1], [0])[0])
    np.testing.assert_array_equal(pipeline.variations(source, [1, 2]), pipeline.variations(source, [1, 2], eta=1.0))
    assert not np.array_equal(pipeline.variations(source, [1, 2]), pipeline.variations(source, [1, 2], eta=0.3))
    # A run trained before the fields existed reads the paper's defaults (variations 1, text diffs 0).
    older = tmp_path / "older"
    shutil.copytree(unclip_run[0], older)
    path = older / "decoder" / "config.json"
    config = json.loads(path.read_text())
    for field in ("variation_eta", "text_diff_eta", "manipulation_guidance_scale"):
        del config["decoder"][field]
    path.write_text(json.dumps(config))
    loaded = Pipeline(str(older), batch_size=8)
    guidance = config["sampling"]["guidance_scale"]
    assert (loaded.variation_eta, loaded.text_diff_eta, loaded.manipulation_guidance_scale) == (1.0, 0.0, guidance)
    with pytest.raises(ConfigError, match="manipulation_guidance_scale=-1"):
        Pipeline(str(older), manipulation_guidance_scale=-1.0)


def test_invalid_input_is_refused(pipeline, unclip_run, tmp_path):
    workdir = str(unclip_run[0])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        pipeline.text_to_image(["a red circle", "  "], [0, 1])
    with pytest.raises(ConfigError, match="unknown stage 'decodr'"):
        Pipeline(workdir, sampling={"decodr": {"num_steps": 3}})
    with pytest.raises(ConfigError, match=r"decoder.num_steps=0"):
        Pipeline(workdir, sampling={"decoder": {"num_steps": 0}})
    with pytest.raises(ConfigError, match=r"decoder.guidance_scale=-1.0"):
        Pipeline(workdir, sampling={"decoder": {"guidance_scale": -1}})
    with pytest.raises(ConfigError, match="upsampler.guidance_scale"):
        Pipeline(workdir, sampling={"upsampler": {"guidance_scale": 2}})
    # A run whose decoder's final checkpoint is missing (half-written or deleted) is refused.
    broken = tmp_path / "broken"
    shutil.copytree(workdir, broken)
    steps = json.loads((broken / "decoder" / "config.json").read_text())["train"]["num_steps"]
    shutil.rmtree(broken / "decoder" / "checkpoints" / str(steps))
    with pytest.raises(ConfigError, match=r"\(decoder\).*has not finished"):
        Pipeline(str(broken))
    with pytest.raises(ConfigError, match="no config.json"):
        Pipeline(str(tmp_path / "nothing"))


def _sample(workdir, out, *flags):
    command = [sys.executable, "-m", "dalle2_jax.sample", f"--workdir={workdir}", f"--out={out}",
               "--num_cpu_devices=2", *flags]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"})


def test_sample_command_writes_pngs_grid_and_manifest(unclip_run, tmp_path):
    workdir = unclip_run[0]
    out = tmp_path / "out"
    result = _sample(workdir, out, f"--prompt={PROMPTS[0]}", f"--prompt={PROMPTS[1]}", "--num_per_prompt=2",
                     "--seed=3", "--set=decoder.num_steps=2")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert manifest == [{"png": f"{k:04d}.png", "prompt": PROMPTS[k // 2], "seed": 3 + k} for k in range(4)]
    assert all((out / record["png"]).exists() for record in manifest) and (out / "grid.png").exists()
    # An existing output directory is not overwritten.
    again = _sample(workdir, out, f"--prompt={PROMPTS[0]}")
    assert again.returncode != 0 and "already holds samples" in again.stderr
    # Variations of one of the generated images.
    variations = _sample(workdir, tmp_path / "var", "--mode=variations", f"--image={out / '0000.png'}", "--num=2")
    assert variations.returncode == 0, variations.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "var" / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[0]["eta"] == 1.0  # the run's decoder.variation_eta


def test_finished_runs_load_on_another_device_count(unclip_run):
    """The main job trains on 2 CPU devices; its runs must load where there is 1 (or a GPU)."""
    workdir = unclip_run[0]
    script = ("import jax, sys; jax.config.update('jax_num_cpu_devices', 1)\n"
              "from dalle2_jax.stages.finished_run import load_finished_run\n"
              "for stage in ('clip', 'prior', 'decoder', 'upsampler'):\n"
              "    config, params = load_finished_run(sys.argv[1] + '/' + stage, 'workdir', stage)\n"
              "    assert jax.tree.leaves(params), stage\n")
    result = subprocess.run([sys.executable, "-c", script, str(workdir)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("flags, message", [
    (["--prompt= "], "prompt is empty"),
    (["--prompt=a red circle", "--set=decodr.num_steps=3"], "unknown stage 'decodr'"),
    (["--prompt=a red circle", "--set=decoder.num_steps=-2"], "decoder.num_steps=-2"),
    (["--prompt=a red circle", "--set=num_steps"], "expected STAGE.FIELD=VALUE"),
    (["--mode=interpolate", "--image=a.png"], "takes 2 --image"),
    (["--prompt=a red circle", "--manipulation_guidance=-2"], "--manipulation_guidance=-2.0: must be >= 0"),
])
def test_sample_command_errors_are_one_line(unclip_run, tmp_path, flags, message):
    result = _sample(unclip_run[0], tmp_path / "out", *flags)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last, result.stderr[-2000:]


def test_manipulation_measurements_run(pipeline, shapes_data_dir):
    from dalle2_jax.data import pipeline as data_pipeline
    from dalle2_jax.data import shapes
    from dalle2_jax.evaluation.manipulations import measure

    source = data_pipeline.open_splits(pipeline.clip.config.data, ["validation"])["validation"]
    data = data_pipeline.load_all(source, pipeline.clip.example, 2)
    attributes = [shapes.all_combinations()[c] for c in data["combination"]]
    metrics, grids = measure(pipeline, data["image"], attributes, num_variations=2, thetas=[0.5], eta=1.0)
    assert 0.0 <= metrics["variations/all_attributes_kept"] <= 1.0
    assert 0.0 <= metrics["interpolation/endpoints_reproduce_source_attributes"] <= 1.0
    assert "text_diff/theta_0.5/took_target_color" in metrics
    assert "text_diff_with_captions/theta_0.5/took_target_color" in metrics
    assert metrics["variations/mean_abs_diff_to_source"] > 0 and metrics["variations/mean_abs_diff_between"] > 0
    assert metrics["variations/dataset_mean_abs_diff_between_same_attributes"] > 0
    assert grids["interpolations"].dtype == np.uint8
