"""Tests for dalle2_jax.models.prior: the unCLIP diffusion prior (Ramesh et al. 2022, sec 2.2)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dalle2_jax.models.prior import DiffusionPrior, count_params, timestep_embedding
from dalle2_jax.nn import axes
from dalle2_jax.nn.transformer import stack_blocks

AXIS_NAMES = {v for k, v in vars(axes).items() if k.isupper()} | {None}
E, TEXT_WIDTH, L = 8, 12, 6


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(
        {"embed_dim": E, "text_width": TEXT_WIDTH, "max_text_length": L, "width": 16, "depth": 2,
         "num_heads": 2, "mlp_ratio": 2.0, "remat": False}
    )
    cfg.update(overrides)
    return cfg


def make_inputs() -> dict[str, jax.Array]:
    """Three examples: 4 real text tokens, 2 real tokens, and an empty caption (no real token)."""
    keys = jax.random.split(jax.random.key(1), 3)
    return {
        "x_t": jax.random.normal(keys[0], (3, E)),
        "t": jnp.array([0, 500, 999], jnp.int32),
        "text_embed": jax.random.normal(keys[1], (3, E)),
        "text_encodings": jax.random.normal(keys[2], (3, L, TEXT_WIDTH)),
        "text_mask": jnp.arange(L)[None, :] < jnp.array([4, 2, 0])[:, None],
        "drop_text": jnp.zeros((3,), bool),
    }


@functools.cache
def jitted_apply(model: nn.Module):
    return jax.jit(model.apply)


def predict(model: nn.Module, variables, inputs: dict[str, jax.Array], **changes) -> np.ndarray:
    return np.asarray(jitted_apply(model)(variables, **{**inputs, **changes}))


@pytest.fixture(scope="module")
def model_and_params():
    model = DiffusionPrior.from_config(tiny_config())
    variables = jax.jit(model.init)(jax.random.key(0), **make_inputs())
    return model, variables


def test_output_shape_dtype_and_bfloat16_compute(model_and_params):
    model, variables = model_and_params
    inputs = make_inputs()
    out = jitted_apply(model)(variables, **inputs)
    assert out.shape == (3, E) and out.dtype == jnp.float32
    assert np.all(np.isfinite(out))  # also the empty caption, whose text tokens are all padding
    bf16 = DiffusionPrior.from_config(tiny_config(), dtype=jnp.bfloat16)
    out_bf16 = jitted_apply(bf16)(variables, **inputs)
    assert out_bf16.dtype == jnp.float32
    np.testing.assert_allclose(out_bf16, out, atol=0.1)


def test_prediction_depends_on_every_input(model_and_params):
    model, variables = model_and_params
    inputs = make_inputs()
    base = predict(model, variables, inputs)
    changes = {
        "x_t": inputs["x_t"] + 1.0,
        "t": inputs["t"] + 7,
        "text_embed": inputs["text_embed"] + 1.0,
        "text_encodings": inputs["text_encodings"].at[:, 0].add(1.0),  # a real token of rows 0 and 1
    }
    for name, value in changes.items():
        out = predict(model, variables, inputs, **{name: value})
        assert not np.allclose(out[:2], base[:2], atol=1e-4), name


def test_padded_text_tokens_are_never_attended(model_and_params):
    model, variables = model_and_params
    inputs = make_inputs()
    base = predict(model, variables, inputs)
    noise = 10 * jax.random.normal(jax.random.key(7), inputs["text_encodings"].shape)
    padded = jnp.where(inputs["text_mask"][..., None], inputs["text_encodings"], noise)
    np.testing.assert_array_equal(predict(model, variables, inputs, text_encodings=padded), base)


def test_dropped_text_is_replaced_by_the_null_conditioning(model_and_params):
    model, variables = model_and_params
    inputs = make_inputs()
    drop = jnp.ones((3,), bool)
    dropped = predict(model, variables, inputs, drop_text=drop)
    other_text = {
        "text_embed": -inputs["text_embed"],
        "text_encodings": inputs["text_encodings"][::-1],
        "text_mask": inputs["text_mask"][::-1],
    }
    np.testing.assert_array_equal(predict(model, variables, inputs, drop_text=drop, **other_text), dropped)
    assert not np.allclose(dropped, predict(model, variables, inputs), atol=1e-4)
    # The null conditioning is the same for every row: rows differ only through x_t and t.
    same_noise = {"x_t": jnp.broadcast_to(inputs["x_t"][:1], (3, E)), "t": jnp.full((3,), 250, jnp.int32)}
    out = predict(model, variables, inputs, drop_text=drop, **same_noise, **other_text)
    np.testing.assert_allclose(out, np.broadcast_to(out[:1], out.shape), atol=1e-6)


def test_every_param_is_partitioned_with_names_of_the_right_rank(model_and_params):
    _, variables = model_and_params
    leaves = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, nn.Partitioned)
        assert len(leaf.names) == leaf.value.ndim
        assert set(leaf.names) <= AXIS_NAMES
    params = variables["params"]
    assert params["null_text_embed"].value.shape == (E,)
    assert params["null_text_encodings"].value.shape == (L, TEXT_WIDTH)
    assert params["position_embedding"].value.shape == (L + 4, 16)


def test_remat_gives_identical_outputs(model_and_params):
    model, variables = model_and_params
    inputs = make_inputs()
    remat = DiffusionPrior.from_config(tiny_config(remat=True))
    np.testing.assert_array_equal(predict(remat, variables, inputs), predict(model, variables, inputs))


def test_scan_layers_is_the_same_prior_with_stacked_blocks(model_and_params):
    model, variables = model_and_params
    inputs = make_inputs()
    scanned = DiffusionPrior.from_config(tiny_config(scan_layers=True))
    params = nn.meta.unbox(variables["params"])
    stacked = {**params, "transformer": stack_blocks(params["transformer"], 2)}
    assert jax.tree.structure(nn.meta.unbox(jax.eval_shape(scanned.init, jax.random.key(0), **inputs)["params"])) \
        == jax.tree.structure(stacked)
    np.testing.assert_allclose(predict(scanned, {"params": stacked}, inputs), predict(model, variables, inputs),
                               rtol=1e-5, atol=1e-6)


def test_timestep_embedding():
    emb = timestep_embedding(jnp.array([0, 3]), 8)
    assert emb.shape == (2, 8) and emb.dtype == jnp.float32
    np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(emb[1, 0], np.cos(3.0), rtol=1e-6)  # frequency 1
    np.testing.assert_allclose(emb[1, 4], np.sin(3.0), rtol=1e-6)


def test_config_and_input_errors(model_and_params):
    with pytest.raises(ValueError, match="model.embed_dim"):
        DiffusionPrior.from_config(tiny_config(embed_dim=None))
    with pytest.raises(ValueError, match="model.num_heads=3 must divide model.width=16"):
        DiffusionPrior.from_config(tiny_config(num_heads=3))
    model, variables = model_and_params
    inputs = make_inputs()
    with pytest.raises(ValueError, match="text_encodings has shape"):
        model.apply(variables, **{**inputs, "text_encodings": inputs["text_encodings"][:, :4]})


def test_count_params_of_the_paper_config():
    """Appendix C: a 1B-parameter prior of width 2048, 24 blocks, 32 heads, on CLIP ViT-H/16."""
    from tests.tiny import load_config

    prior, clip = load_config("configs/paper/prior_1b.py"), load_config("configs/paper/clip_vit_h16.py")
    cfg = ml_collections.ConfigDict(prior.model.to_dict())
    cfg.embed_dim, cfg.text_width = clip.model.embed_dim, clip.model.text.width
    cfg.max_text_length = clip.tokenizer.context_length
    w, depth, e, text_width, length = 2048, 24, 1024, 1024, 77
    hidden = 4 * w
    block = (
        2 * 2 * w  # two LayerNorms
        + 4 * (w * w + w)  # query, key, value, out projections
        + (w * hidden + hidden) + (hidden * w + w)  # MLP
    )
    inputs = (
        (text_width * w + w)  # text token encodings -> width
        + 2 * (e * w + w)  # CLIP text embedding and noised image embedding -> width
        + 2 * (w * w + w)  # timestep MLP
        + w  # learned query token
        + (length + 4) * w  # positions
        + e + length * text_width  # null text embedding and null token encodings
    )
    output = 2 * w + (w * e + e)  # final LayerNorm and projection to the embedding
    expected = depth * block + inputs + output
    count = count_params(cfg)
    print(f"paper diffusion prior: {count:,} parameters")
    assert count == expected
    # The paper's "1B" is rounded: the 24 blocks of width 2048 alone hold 24 * 12 * 2048**2 = 1.21e9.
    assert 1.0e9 <= count < 1.3e9
