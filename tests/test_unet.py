"""Tests for dalle2_jax.models.unet: the ADM / GLIDE UNet of unCLIP's decoder and upsamplers."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dalle2_jax.config_schema import DEFAULT_RULES
from dalle2_jax.models.unet import UNet, count_params, num_groups
from dalle2_jax.nn import axes
from dalle2_jax.nn.transformer import stack_blocks

AXIS_NAMES = {v for k, v in vars(axes).items() if k.isupper()} | {None}
B, SIZE, E, L = 2, 8, 8, 6


def decoder_config(**overrides) -> ml_collections.ConfigDict:
    """A tiny decoder: CLIP + text conditioning, attention at both resolutions."""
    cfg = ml_collections.ConfigDict({
        "image_size": SIZE, "channels": 16, "channel_mults": (1, 2), "num_res_blocks": 1,
        "attention_resolutions": (8, 4), "head_channels": 8, "out_channels": 6, "clip_embed_dim": E,
        "text": {"vocab_size": 32, "context_length": L, "width": 16, "depth": 1, "num_heads": 2},
        "remat": False,
    })
    cfg.update(overrides)
    return cfg


def upsampler_config(**overrides) -> ml_collections.ConfigDict:
    """A tiny upsampler: low-resolution conditioning only, no attention."""
    cfg = ml_collections.ConfigDict({
        "image_size": SIZE, "channels": 8, "channel_mults": (1, 2), "num_res_blocks": 1,
        "attention_resolutions": (), "low_res_channels": 3, "dropout": 0.1,
    })
    cfg.update(overrides)
    return cfg


def decoder_inputs() -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.key(1), 2)
    return {
        "x_t": jax.random.normal(keys[0], (B, SIZE, SIZE, 3)),
        "t": jnp.array([3, 700]),
        "clip_embed": jax.random.normal(keys[1], (B, E)),
        "text_tokens": jnp.array([[1, 7, 9, 2, 0, 0], [1, 30, 2, 0, 0, 0]]),
        "drop_clip": jnp.zeros((B,), bool),
        "drop_text": jnp.zeros((B,), bool),
    }


def upsampler_inputs() -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.key(2), 2)
    return {
        "x_t": jax.random.normal(keys[0], (B, SIZE, SIZE, 3)),
        "t": jnp.array([5, 900]),
        "low_res": jax.random.normal(keys[1], (B, SIZE // 2, SIZE // 2, 3)),
    }


def init(model: nn.Module, inputs: dict[str, jax.Array]):
    """The model's init under a key of the "unsafe_rbg" generator: XLA:CPU compiles threefry for the
    ~100 parameters of even a tiny UNet 4-5x slower (~25 s here), and the generator is irrelevant."""
    return jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), **inputs)


def perturb(variables, seed: int = 3):
    """Adds noise to every parameter so the zero-initialised layers stop hiding the inputs (in numpy:
    eager JAX ops would compile one program per parameter shape)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + 0.3 * rng.standard_normal(x.shape, np.float32), variables)


@functools.cache
def jitted_apply(model: nn.Module):
    return jax.jit(model.apply, static_argnames="train")


def run(model: nn.Module, variables, inputs: dict[str, jax.Array], **changes) -> np.ndarray:
    return np.asarray(jitted_apply(model)(variables, **{**inputs, **changes}))


@pytest.fixture(scope="module")
def decoder():
    model = UNet.from_config(decoder_config())
    variables = init(model, decoder_inputs())
    return model, variables, perturb(variables)


@pytest.fixture(scope="module")
def upsampler():
    model = UNet.from_config(upsampler_config())
    variables = init(model, upsampler_inputs())
    return model, variables, perturb(variables)


def test_num_groups():
    assert [num_groups(c) for c in (512, 64, 32, 16, 6, 320, 192, 48)] == [32, 32, 32, 16, 6, 32, 32, 24]


def test_shapes_and_zero_output_at_init(decoder, upsampler):
    for (model, variables, perturbed), inputs in ((decoder, decoder_inputs()), (upsampler, upsampler_inputs())):
        out = jitted_apply(model)(variables, **inputs)
        assert out.shape == (B, SIZE, SIZE, model.out_channels) and out.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(out), 0.0)  # zero-initialised output conv
        assert np.all(np.isfinite(run(model, perturbed, inputs)))


def test_decoder_conditioning_paths(decoder):
    model, _, variables = decoder
    inputs = decoder_inputs()
    base = run(model, variables, inputs)
    other_clip = jax.random.normal(jax.random.key(9), (B, E))
    other_text = jnp.array([[1, 4, 2, 0, 0, 0], [1, 11, 12, 13, 14, 2]])
    assert not np.allclose(base, run(model, variables, inputs, t=jnp.array([4, 100])))
    assert not np.allclose(base, run(model, variables, inputs, clip_embed=other_clip))
    assert not np.allclose(base, run(model, variables, inputs, text_tokens=other_text))

    dropped_clip = run(model, variables, inputs, drop_clip=jnp.ones((B,), bool))
    assert not np.allclose(base, dropped_clip)
    np.testing.assert_allclose(
        run(model, variables, inputs, drop_clip=jnp.ones((B,), bool), clip_embed=other_clip), dropped_clip,
        rtol=1e-6, atol=1e-6)
    dropped_text = run(model, variables, inputs, drop_text=jnp.ones((B,), bool))
    assert not np.allclose(base, dropped_text)
    np.testing.assert_allclose(
        run(model, variables, inputs, drop_text=jnp.ones((B,), bool), text_tokens=other_text), dropped_text,
        rtol=1e-6, atol=1e-6)
    # A caption with no real token is no caption: the same as dropping the text.
    np.testing.assert_allclose(run(model, variables, inputs, text_tokens=jnp.zeros((B, L), jnp.int32)),
                               dropped_text, rtol=1e-6, atol=1e-6)
    # Dropping is per example.
    half = run(model, variables, inputs, drop_text=jnp.array([True, False]))
    np.testing.assert_allclose(half[0], dropped_text[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(half[1], base[1], rtol=1e-6, atol=1e-6)


def test_clip_embed_scale_multiplies_the_embedding_not_the_null(decoder):
    """`clip_embed_scale` s on embedding e is the unscaled model on s * e; a dropped embedding
    stays the learned null (the scale is not applied to it)."""
    model, _, variables = decoder
    scaled = model.clone(clip_embed_scale=3.0)
    inputs = decoder_inputs()
    np.testing.assert_allclose(run(scaled, variables, inputs),
                               run(model, variables, inputs, clip_embed=3.0 * inputs["clip_embed"]),
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(run(scaled, variables, inputs), run(model, variables, inputs))
    dropped = jnp.ones((B,), bool)
    np.testing.assert_allclose(run(scaled, variables, inputs, drop_clip=dropped),
                               run(model, variables, inputs, drop_clip=dropped), rtol=1e-6, atol=1e-6)


def test_text_padding_does_not_change_the_output(decoder):
    model, _, variables = decoder
    inputs = decoder_inputs()
    shorter = run(model, variables, inputs, text_tokens=inputs["text_tokens"][:, :4])
    np.testing.assert_allclose(run(model, variables, inputs), shorter, rtol=1e-5, atol=1e-5)


def test_upsampler_conditioning_and_dropout(upsampler):
    model, _, variables = upsampler
    inputs = upsampler_inputs()
    base = run(model, variables, inputs)
    assert not np.allclose(base, run(model, variables, inputs, low_res=inputs["low_res"] + 1.0))
    assert not np.allclose(base, run(model, variables, inputs, t=jnp.array([6, 10])))
    with pytest.raises(ValueError, match="low_res is required"):
        model.apply(variables, inputs["x_t"], inputs["t"])
    rngs = {"dropout": jax.random.key(4, impl="unsafe_rbg")}
    with_dropout = jitted_apply(model)(variables, **inputs, train=True, rngs=rngs)
    assert not np.allclose(base, np.asarray(with_dropout))


def test_bfloat16_compute_gives_float32_output(upsampler):
    _, _, variables = upsampler
    model = UNet.from_config(upsampler_config(), dtype=jnp.bfloat16)
    out = jitted_apply(model)(variables, **upsampler_inputs())
    assert out.dtype == jnp.float32
    reference = run(*upsampler[::2], upsampler_inputs())
    assert np.linalg.norm(np.asarray(out) - reference) < 0.05 * np.linalg.norm(reference)


def test_every_param_is_partitioned_with_names_of_its_rank(decoder, upsampler):
    for _, variables, _ in (decoder, upsampler):
        leaves = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
        for leaf in leaves:
            assert isinstance(leaf, nn.Partitioned), leaf
            assert len(leaf.names) == leaf.value.ndim, (leaf.names, leaf.value.shape)
            assert set(leaf.names) <= AXIS_NAMES
            if leaf.value.ndim == 4:
                assert leaf.names[:2] == (None, None)
    params = decoder[1]["params"]
    assert {"null_clip_embed", "null_text_embed", "text_encoder"} <= set(params)
    assert params["conv_in"]["kernel"].names == (None, None, None, axes.CONV_OUT)  # image channels
    assert params["conv_out"]["kernel"].names == (None, None, axes.CONV_IN, None)
    assert params["down_0_res_0"]["conv_in"]["kernel"].names == (None, None, axes.CONV_IN, axes.CONV_OUT)


def test_params_shard_on_a_mesh_with_the_default_rules(decoder, upsampler):
    """Every parameter divides evenly on a (data 2, fsdp 2, tensor 2) mesh (nothing compiled; the
    8 simulated CPU devices, so that it runs on a one-GPU machine too)."""
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3,
                         devices=jax.devices("cpu")[:8])
    for _, variables, _ in (decoder, upsampler):
        boxed = variables["params"]
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, DEFAULT_RULES)
        values = jax.tree.leaves(boxed)
        for value, sharding in zip(values, jax.tree.leaves(shardings)):
            sharding.shard_shape(value.shape)  # raises if a sharded dimension does not divide
        assert any(s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(shardings))


def test_remat_gives_identical_outputs(decoder):
    model, _, variables = decoder
    rematted = UNet.from_config(decoder_config(remat=True))
    inputs = decoder_inputs()
    np.testing.assert_allclose(run(rematted, variables, inputs), run(model, variables, inputs), rtol=1e-6, atol=1e-6)


def test_scanned_caption_encoder_is_the_same_decoder():
    scanned = UNet.from_config(decoder_config(text={**decoder_config().text.to_dict(), "depth": 2}, scan_layers=True))
    unrolled = UNet.from_config(decoder_config(text={**decoder_config().text.to_dict(), "depth": 2}))
    inputs = decoder_inputs()
    params = nn.meta.unbox(perturb(init(unrolled, inputs)))["params"]
    encoder = params["text_encoder"]
    stacked = {**params, "text_encoder": {**encoder, "transformer": stack_blocks(encoder["transformer"], 2)}}
    np.testing.assert_allclose(run(scanned, {"params": stacked}, inputs), run(unrolled, {"params": params}, inputs),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # two backward compiles: ~35 s on 2 busy cores
def test_remat_gives_identical_gradients(decoder):
    _, _, variables = decoder
    inputs = decoder_inputs()
    weights = np.random.default_rng(5).standard_normal((B, SIZE, SIZE, 6), np.float32)

    def loss_and_grad(remat: bool):
        model = UNet.from_config(decoder_config(remat=remat))
        return jax.jit(jax.value_and_grad(lambda v: jnp.mean(model.apply(v, **inputs) * weights)))(variables)

    (loss, grads), (loss_remat, grads_remat) = loss_and_grad(False), loss_and_grad(True)
    np.testing.assert_allclose(loss, loss_remat, rtol=1e-6)
    # Recomputed activations may be fused differently by XLA: equal up to float32 rounding.
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads))
    for g, g_remat in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_remat)):
        np.testing.assert_allclose(g, g_remat, rtol=1e-4, atol=1e-5 * scale)


def test_invalid_configs_raise_naming_the_field():
    with pytest.raises(ValueError, match="model.attention_resolutions"):
        UNet.from_config(decoder_config(attention_resolutions=(2,)))
    with pytest.raises(ValueError, match="model.head_channels"):
        UNet.from_config(decoder_config(head_channels=5))
    with pytest.raises(ValueError, match="model.image_size"):
        UNet.from_config(decoder_config(image_size=7))
    with pytest.raises(ValueError, match="model.context_width"):
        UNet.from_config(decoder_config(context_width=8))
    with pytest.raises(ValueError, match="model.patch_size"):
        UNet.from_config(decoder_config(patch_size=0))
    with pytest.raises(ValueError, match=r"model.image_size=8 must be divisible by model.patch_size \* "):
        UNet.from_config(decoder_config(patch_size=8))


def test_patch_size_runs_the_network_on_patches():
    """patch_size=2: the levels run at half the side, the output is whole images again, and every
    output pixel of a patch has its own output channels."""
    model = UNet.from_config(decoder_config(patch_size=2, attention_resolutions=(4, 2)))
    assert model.resolutions == (4, 2)
    inputs = decoder_inputs()
    variables = init(model, inputs)
    params = variables["params"]
    assert params["conv_in"]["kernel"].value.shape == (3, 3, 2 * 2 * 3, 16)
    assert params["conv_out"]["kernel"].value.shape == (3, 3, 16, 2 * 2 * 6)
    np.testing.assert_array_equal(run(model, variables, inputs), 0.0)
    out = run(model, perturb(variables), inputs)
    assert out.shape == (B, SIZE, SIZE, 6) and np.all(np.isfinite(out))
    # The four pixels of a patch are not copies of one prediction.
    assert not np.allclose(out[:, 0::2, 0::2], out[:, 1::2, 1::2])
    # Changing one input pixel changes the output: the patch's channels are read, not dropped.
    nudged = inputs["x_t"].at[:, 1, 1, 0].add(1.0)
    assert not np.allclose(out, run(model, perturb(variables), inputs, x_t=nudged))


PAPER_TEXT = {"vocab_size": 50257, "context_length": 256, "width": 2048, "depth": 24, "num_heads": 32}
PAPER_MODELS = {
    # unCLIP appendix C, table 3: decoder 3.5B (GLIDE's), upsamplers 700M and 300M.
    "decoder": (dict(image_size=64, channels=512, channel_mults=(1, 2, 3, 4), num_res_blocks=3,
                     attention_resolutions=(32, 16, 8), head_channels=64, out_channels=6, clip_embed_dim=1024,
                     text=PAPER_TEXT), 3.5e9),
    "upsampler_64_256": (dict(image_size=256, channels=320, channel_mults=(1, 2, 3, 4), num_res_blocks=3,
                              attention_resolutions=(), low_res_channels=3), 700e6),
    "upsampler_256_1024": (dict(image_size=1024, channels=192, channel_mults=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                                attention_resolutions=(), low_res_channels=3), 300e6),
}


@pytest.mark.parametrize("name", sorted(PAPER_MODELS))
def test_paper_parameter_counts(name):
    fields, paper = PAPER_MODELS[name]
    count = count_params(ml_collections.ConfigDict(fields))
    print(f"{name}: {count:,} parameters (paper: {paper:,.0f})")
    assert abs(count - paper) / paper < 0.15


def test_spatial_clip_map_and_coordinate_channels():
    """The optional layout aids: a CLIP map at one feature-map size and (x, y) input channels."""
    cfg = decoder_config(attention_resolutions=(), clip_spatial=4, coordinate_channels=True)
    del cfg["text"]
    model = UNet.from_config(cfg)
    inputs = {k: v for k, v in decoder_inputs().items() if k != "text_tokens"}
    variables = perturb(init(model, inputs))
    params = variables["params"]
    assert params["clip_to_map"]["kernel"].value.shape == (E, 4 * 4 * 16)
    assert params["conv_in"]["kernel"].value.shape == (3, 3, 3 + 2, 16)  # x_t and the two coordinates
    base = run(model, variables, inputs)
    # Only the map carries CLIP here: changing it changes the output; dropping CLIP ignores it.
    without_map = jax.tree.map(np.zeros_like, params["clip_to_map"])
    changed = {"params": {**params, "clip_to_map": without_map}}
    assert not np.allclose(base, run(model, changed, inputs))
    dropped = run(model, variables, inputs, drop_clip=jnp.ones((B,), bool))
    np.testing.assert_allclose(dropped, run(model, variables, inputs, drop_clip=jnp.ones((B,), bool),
                                            clip_embed=jax.random.normal(jax.random.key(5), (B, E))),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="model.clip_spatial=3"):
        UNet.from_config(decoder_config(clip_spatial=3))


def test_caption_padding_is_found_by_position_not_by_id():
    """CLIP's BPE pads with 0, which is also the id of "!": a 0 before the end token is a real token."""
    from dalle2_jax.models.unet import TextEncoder
    from dalle2_jax.nn.transformer import caption_positions

    sot, eot = 49406, 49407
    tokens = jnp.array([[sot, 320, 0, 0, eot, 0, 0],  # "a ! !" then padding
                        [sot, 320, eot, 0, 0, 0, 0],
                        [0, 0, 0, 0, 0, 0, 0]])  # no caption at all
    mask, last = caption_positions(tokens, pad_id=0, eot_id=eot)
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0], [0] * 7])
    np.testing.assert_array_equal(last[:2], [4, 2])
    # Without the end token's id, the "!" tokens would be taken for padding.
    assert not caption_positions(tokens, pad_id=0, eot_id=None)[0][0, 2]

    encoder = TextEncoder(vocab_size=49408, context_length=7, width=16, depth=1, num_heads=2, eot_id=eot)
    params = encoder.init(jax.random.key(0), tokens)
    encodings, pooled, encoder_mask = encoder.apply(params, tokens)
    np.testing.assert_array_equal(encoder_mask, mask)
    np.testing.assert_allclose(pooled[0], encodings[0, 4])
    # The "!" tokens change the caption's features: they are attended to, not masked.
    other = tokens.at[0, 2:4].set(320)
    assert not np.allclose(encoder.apply(params, other)[1][0], pooled[0])
