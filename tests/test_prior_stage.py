"""The prior stage end to end on tiny models: embeddings on disk, training, sampling, evaluation."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dalle2_jax import config_schema
from dalle2_jax.data import embeddings
from dalle2_jax.diffusion import schedules
from dalle2_jax.parallel.mesh import ConfigError
from dalle2_jax.stages import make_stage
from dalle2_jax.stages.prior import sample_embeddings
from dalle2_jax.training.loop import train_and_evaluate
from tests.tiny import load_config, tiny_stage_config

TINY_PRIOR = {
    "model.width": 16, "model.depth": 1, "model.num_heads": 2,
    "data.batch_size": 16, "data.eval_batch_size": 16, "data.num_threads": 1,
    "sampling.num_steps": 4, "sampling.guidance_scale": 2.0, "prior.eval_limit": 16,
    "train.num_steps": 4, "train.log_every": 2, "train.eval_every": 100, "train.checkpoint_every": 100,
}


def tiny_prior_config(clip_workdir, data_dir, **fields):
    config = tiny_stage_config("configs/shapes/prior.py", data_dir, TINY_PRIOR, **fields)
    config.clip.workdir = clip_workdir
    return config


def test_prior_trains_on_precomputed_embeddings_and_evaluates(clip_workdir, shapes_data_dir, tmp_path):
    config = tiny_prior_config(clip_workdir, shapes_data_dir, **{"prior.embeddings_dir": str(tmp_path / "emb")})
    state, metrics = train_and_evaluate(config, str(tmp_path / "prior"), make_stage(config))
    assert int(state.step) == 4
    for split, size in (("train", 256), ("validation", 64), ("heldout", 64)):
        source = embeddings.EmbeddingSource(tmp_path / "emb", split)
        assert len(source) == size and len(source.captions) == size
        example = source[3]
        assert example["image_embed"].shape == (16,) and example["text_encodings"].shape == (16, 16)
        np.testing.assert_allclose(np.linalg.norm(example["image_embed"]), 1.0, rtol=1e-5)
    for split in ("validation", "heldout"):
        for name in ("cosine_prior", "cosine_text_baseline", "cosine_mean_baseline", "zero_shot_top1_prior",
                     "zero_shot_top1_true_image"):
            assert np.isfinite(metrics[f"eval/{split}/{name}"])
        assert -1.0 <= metrics[f"eval/{split}/cosine_prior"] <= 1.0


def test_sampling_is_one_compiled_loop():
    """The model is traced once for all steps (a Python loop over timesteps would trace it per step)."""

    class CountingModel:
        traces = 0

        def apply(self, variables, x_t, t, text_embed, encodings, mask, drop):
            CountingModel.traces += 1
            return x_t * 0.5 + text_embed * 0.1 + jnp.where(drop[:, None], 0.0, 1.0)

    sampling = load_config("configs/shapes/prior.py").sampling
    sampling.guidance_scale = 3.0
    schedule = schedules.respace(schedules.cosine_schedule(1000), 64)
    batch = {"text_embed": jnp.ones((4, 8)) / np.sqrt(8), "text_encodings": jnp.zeros((4, 5, 6)),
             "text_mask": jnp.ones((4, 5), bool)}
    fn = jax.jit(lambda rng: sample_embeddings(CountingModel(), {}, batch, rng, schedule, sampling, "x0", 2.0))
    out = fn(jax.random.key(0))
    fn(jax.random.key(1))
    assert out.shape == (4, 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)
    assert CountingModel.traces == 1


def test_embeddings_round_trip_over_several_shards(tmp_path):
    arrays = {"image_embed": np.arange(20, dtype=np.float32).reshape(10, 2), "text_mask": np.ones((10, 3), bool)}
    embeddings.write_split(tmp_path, "train", arrays, [f"caption {i}" for i in range(10)], shard_size=4)
    source = embeddings.EmbeddingSource(tmp_path, "train")
    assert len(source) == 10
    np.testing.assert_array_equal(source[9]["image_embed"], [18, 19])
    np.testing.assert_array_equal(source.all()["image_embed"], arrays["image_embed"])
    assert source.captions[9] == "caption 9"
    with pytest.raises(IndexError):
        source[10]
    with pytest.raises(embeddings.EmbeddingsError, match="validation"):
        embeddings.EmbeddingSource(tmp_path, "validation")


def test_prior_config_errors_name_the_field(clip_workdir, shapes_data_dir, tmp_path):
    config = load_config("configs/shapes/prior.py")
    config.clip.workdir = str(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="clip.workdir=.*not a clip run"):
        make_stage(config)

    for field, value in (("sampling.sampler", "euler"), ("diffusion.loss_weighting", "snr"),
                         ("diffusion.schedule", "sigmoid"), ("prior.embeddings", "disk")):
        config = tiny_prior_config(clip_workdir, shapes_data_dir, **{field: value})
        with pytest.raises(ConfigError, match=f"{field}='{value}'"):
            config_schema.validate(config, num_devices=8, num_processes=1)

    # A CLIP run whose config asks for more steps than its checkpoints reached is refused.
    unfinished = tmp_path / "unfinished_clip"
    shutil.copytree(clip_workdir, unfinished)
    saved = json.loads((unfinished / "config.json").read_text())
    saved["train"]["num_steps"] = 1000
    (unfinished / "config.json").write_text(json.dumps(saved))
    config.clip.workdir = str(unfinished)
    with pytest.raises(ConfigError, match="has not finished"):
        make_stage(config)


def test_on_the_fly_embeddings_train_the_same_model(clip_workdir, shapes_data_dir, tmp_path):
    """Encoding each batch with the frozen CLIP inside the step gives the same training as reading
    the precomputed embeddings (same examples, same order, same CLIP)."""
    fields = {"prior.embeddings_dir": str(tmp_path / "emb"), "train.num_steps": 3, "optim.ema_decay": 0.0}
    results = {}
    for mode in ("on_the_fly", "precomputed"):
        config = tiny_prior_config(clip_workdir, shapes_data_dir, **fields, **{"prior.embeddings": mode})
        state, _ = train_and_evaluate(config, str(tmp_path / mode), make_stage(config))
        results[mode] = jax.device_get(state.params)
        # On the fly, only the small eval splits are stored; the train split is never written.
        assert embeddings.is_complete(tmp_path / "emb", "train") == (mode == "precomputed")
    for a, b in zip(jax.tree.leaves(results["precomputed"]), jax.tree.leaves(results["on_the_fly"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
