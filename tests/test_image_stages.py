"""The decoder and upsampler stages on tiny models: crops, full-size application, config errors.

That they train on a mesh as on one device is tested with every stage in test_sharding_strategies.py."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dalle2_jax import config_schema
from dalle2_jax.data.tokenizer import make_tokenizer
from dalle2_jax.models.unet import count_params
from dalle2_jax.parallel.mesh import ConfigError
from dalle2_jax.stages import decoder, make_stage, upsampler
from dalle2_jax.stages.upsampler import _random_crops
from tests.tiny import TINY_DECODER_OVERRIDES, TINY_UPSAMPLER_OVERRIDES, load_config, tiny_stage_config


def decoder_config(clip_workdir, data_dir, **fields):
    config = tiny_stage_config("configs/shapes/decoder.py", data_dir, TINY_DECODER_OVERRIDES, **fields)
    config.clip.workdir = clip_workdir
    return config


def upsampler_config(data_dir, **fields):
    return tiny_stage_config("configs/shapes/upsampler.py", data_dir, TINY_UPSAMPLER_OVERRIDES, **fields)


def test_random_crops_are_aligned_with_the_low_res_image():
    high = jnp.arange(2 * 8 * 8 * 1, dtype=jnp.float32).reshape(2, 8, 8, 1)
    low = high[:, ::2, ::2]  # a point-sampled 2x downsampling: crops must pick the same points
    for seed in range(5):
        hi_crop, lo_crop = _random_crops(jax.random.key(seed), high, low, 4)
        assert hi_crop.shape == (2, 4, 4, 1) and lo_crop.shape == (2, 2, 2, 1)
        np.testing.assert_array_equal(lo_crop, hi_crop[:, ::2, ::2])


def test_upsampler_trains_on_crops_and_runs_at_full_size(shapes_data_dir):
    config = upsampler_config(shapes_data_dir)
    stage = make_stage(config)
    assert stage.train_model.image_size == 16 and stage.model.image_size == 64
    params = stage.init_params(jax.random.key(0))
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                          is_leaf=lambda x: hasattr(x, "value"))
    low = jnp.zeros((2, 32, 32, 3))
    out = jax.jit(stage.generate)(params, {"low_res": low}, jax.random.key(0))
    assert out.shape == (2, 64, 64, 3)


def test_decoder_and_upsampler_config_errors_name_the_field(clip_workdir, shapes_data_dir):
    cases = [
        (decoder_config(clip_workdir, shapes_data_dir, **{"model.image_size": 64}), "model.image_size=64"),
        (decoder_config(clip_workdir, shapes_data_dir, **{"decoder.text_drop_prob": 1.0}), "decoder.text_drop_prob"),
        (decoder_config(clip_workdir, shapes_data_dir, **{"decoder.variation_eta": -0.5}),
         "decoder.variation_eta=-0.5"),
        (decoder_config(clip_workdir, shapes_data_dir, **{"model.clip_embed_scale": -1.0}),
         "model.clip_embed_scale=-1.0"),
        (decoder_config(clip_workdir, shapes_data_dir, **{"sampling.num_steps": 0}), "sampling.num_steps=0"),
        (decoder_config(clip_workdir, shapes_data_dir, **{"diffusion.objective": "score"}), "diffusion.objective"),
        (upsampler_config(shapes_data_dir, **{"model.attention_resolutions": (16,)}), "model.attention_resolutions"),
        (upsampler_config(shapes_data_dir, **{"upsampler.low_res_size": 24}), "upsampler.low_res_size=24"),
        (upsampler_config(shapes_data_dir, **{"upsampler.crop_size": 15}), "upsampler.crop_size=15"),
        (upsampler_config(shapes_data_dir, **{"upsampler.degradation": "jpeg"}), "upsampler.degradation='jpeg'"),
        (upsampler_config(shapes_data_dir, **{"sampling.guidance_scale": 2.0}), "sampling.guidance_scale"),
    ]
    for config, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            config_schema.validate(config, num_devices=8, num_processes=1)
    config = decoder_config(clip_workdir, shapes_data_dir, **{"model.head_channels": 5})
    with pytest.raises(ConfigError, match="model.head_channels"):
        make_stage(config)


@pytest.mark.parametrize("path, paper", [("configs/paper/decoder_3p5b.py", 3.5e9),
                                         ("configs/paper/upsampler_256.py", 700e6),
                                         ("configs/paper/upsampler_1024.py", 300e6)])
def test_paper_configs_have_the_papers_parameter_counts(path, paper):
    """unCLIP appendix C, table 3: decoder 3.5B, upsamplers 700M and 300M (counted through eval_shape)."""
    config = load_config(path)
    config_schema.validate(config, num_devices=64, num_processes=16)
    if config.stage == "decoder":
        clip_config = load_config("configs/paper/clip_vit_h16.py")
        clip = SimpleNamespace(embed_dim=clip_config.model.embed_dim,
                               context_length=clip_config.tokenizer.context_length,
                               tokenizer=make_tokenizer(clip_config.tokenizer))
        model_config = decoder.unet_config(config, clip)
    else:
        model_config = upsampler.unet_config(config, config.model.image_size)
    count = count_params(model_config)
    print(f"{path}: {count:,} parameters (paper: {paper:,.0f})")
    assert abs(count - paper) / paper < 0.15


def test_decoder_scales_the_clip_embedding_to_unit_variance_and_old_runs_keep_theirs():
    """`model.clip_embed_scale` 0 (the default) is sqrt(embed_dim); a run saved before the field
    existed has none in its config and keeps the unscaled embedding it was trained on."""
    config = load_config("configs/shapes/decoder.py")
    clip = SimpleNamespace(embed_dim=16, context_length=8, tokenizer=SimpleNamespace(
        vocab_size=32, pad_id=0, eot_id=2))
    assert decoder.unet_config(config, clip).clip_embed_scale == 4.0
    config.model.clip_embed_scale = 2.5
    assert decoder.unet_config(config, clip).clip_embed_scale == 2.5
    saved = config.to_dict()  # a run's config.json, as `load_finished_run` reads it back
    del saved["model"]["clip_embed_scale"]
    assert decoder.unet_config(ml_collections.ConfigDict(saved), clip).clip_embed_scale == 1.0
