"""Tests for dalle2_jax.models.clip and the shared attention/transformer blocks."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dalle2_jax.models.clip import CLIP, count_params
from dalle2_jax.nn import axes
from dalle2_jax.nn.attention import MultiHeadAttention
from dalle2_jax.nn.transformer import Transformer, stack_blocks

AXIS_NAMES = {v for k, v in vars(axes).items() if k.isupper()} | {None}
EOT = 2


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(
        {
            "embed_dim": 8,
            "remat": False,
            "vision": {
                "image_size": 8,
                "patch_size": 4,
                "width": 16,
                "depth": 2,
                "num_heads": 2,
                "mlp_ratio": 2.0,
            },
            "text": {
                "context_length": 8,
                "vocab_size": 259,
                "width": 16,
                "depth": 2,
                "num_heads": 2,
                "mlp_ratio": 2.0,
                "eot_token_id": EOT,
            },
        }
    )
    cfg.update_from_flattened_dict(overrides)
    return cfg


def make_inputs():
    images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    tokens = jnp.array([[1, 10, 11, 12, EOT, 0, 0, 0], [1, 20, EOT, 0, 0, 0, 0, 0]], jnp.int32)
    return images, tokens


@pytest.fixture(scope="module")
def model_and_params():
    model = CLIP.from_config(tiny_config())
    images, tokens = make_inputs()
    variables = jax.jit(model.init)(jax.random.key(0), images, tokens)
    return model, variables


@functools.cache
def jitted_apply(model: nn.Module):
    return jax.jit(model.apply, static_argnames="method")


def apply(model, variables, *args, method=None):
    """model.apply, jitted once per model (eager dispatch is slow even for tiny models)."""
    return jitted_apply(model)(variables, *args, method=method)


def test_shapes_dtypes_and_unit_norm(model_and_params):
    model, variables = model_and_params
    images, tokens = make_inputs()
    out = apply(model, variables, images, tokens)
    for name in ("image_embed", "text_embed"):
        assert out[name].shape == (2, 8) and out[name].dtype == jnp.float32
        np.testing.assert_allclose(jnp.linalg.norm(out[name], axis=-1), 1.0, rtol=1e-5)
    assert out["logit_scale"].shape == () and out["logit_scale"].dtype == jnp.float32
    np.testing.assert_allclose(out["logit_scale"], 1 / 0.07, rtol=1e-5)

    emb = apply(model, variables, images, method=CLIP.encode_image)
    assert emb.shape == (2, 8) and emb.dtype == jnp.float32
    pooled, encodings, mask = apply(model, variables, tokens, method=CLIP.encode_text)
    assert pooled.shape == (2, 8) and pooled.dtype == jnp.float32
    assert encodings.shape == (2, 8, 16) and encodings.dtype == jnp.float32
    np.testing.assert_array_equal(mask, tokens != 0)


def test_bfloat16_compute_gives_float32_outputs(model_and_params):
    _, variables = model_and_params
    model = CLIP.from_config(tiny_config(), dtype=jnp.bfloat16)
    out = apply(model, variables, *make_inputs())
    assert all(v.dtype == jnp.float32 for v in out.values())


def test_logit_scale_is_capped_at_100(model_and_params):
    model, variables = model_and_params
    params = nn.meta.unbox(variables)["params"]
    params = {**params, "log_logit_scale": jnp.asarray(math.log(1000.0))}
    out = apply(model, {"params": params}, *make_inputs())
    np.testing.assert_allclose(out["logit_scale"], 100.0, rtol=1e-6)


def test_text_is_pooled_at_first_eot(model_and_params):
    model, variables = model_and_params
    _, tokens = make_inputs()

    def text_embed(t):
        return apply(model, variables, t, method=CLIP.encode_text)[0]

    base = text_embed(tokens)
    after = tokens.at[0, 5:].set(jnp.array([30, EOT, 40]))  # row 0's first EOT is at 4
    np.testing.assert_allclose(text_embed(after), base, atol=1e-6)
    before = tokens.at[0, 2].set(99)
    changed = text_embed(before)
    assert not np.allclose(changed[0], base[0], atol=1e-4)
    np.testing.assert_allclose(changed[1], base[1], atol=1e-6)


def test_text_encodings_are_causal(model_and_params):
    model, variables = model_and_params
    _, tokens = make_inputs()

    def encode(t):
        return apply(model, variables, t, method=CLIP.encode_text)[1]

    base = encode(tokens)
    changed = encode(tokens.at[:, 3].set(77))
    np.testing.assert_allclose(changed[:, :3], base[:, :3], atol=1e-6)
    assert not np.allclose(changed[:, 3:], base[:, 3:], atol=1e-4)


def test_patch_size_must_divide_image_size():
    with pytest.raises(ValueError, match="model.vision.patch_size"):
        CLIP.from_config(tiny_config(**{"vision.patch_size": 3}))


def test_every_param_is_partitioned_with_known_axis_names(model_and_params):
    _, variables = model_and_params
    leaves = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, nn.Partitioned)
        assert leaf.value.dtype == jnp.float32
        assert len(leaf.names) == leaf.value.ndim
        assert set(leaf.names) <= AXIS_NAMES


def test_remat_gives_identical_outputs_and_gradients(model_and_params):
    model, variables = model_and_params
    remat_model = CLIP.from_config(tiny_config(remat=True))
    images, tokens = make_inputs()
    remat_variables = jax.eval_shape(remat_model.init, jax.random.key(0), images, tokens)
    assert jax.tree.structure(remat_variables) == jax.tree.structure(variables)
    out = apply(model, variables, images, tokens)
    remat_out = apply(remat_model, variables, images, tokens)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), remat_out, out)

    x = jax.random.normal(jax.random.key(4), (2, 4, 8))
    params = jax.jit(Transformer(depth=1, width=8, num_heads=2).init)(jax.random.key(5), x)

    @functools.partial(jax.jit, static_argnums=0)
    def value_and_grad(remat):
        transformer = Transformer(depth=1, width=8, num_heads=2, causal=True, remat=remat)
        return jax.value_and_grad(lambda p: jnp.sum(transformer.apply(p, x) ** 2))(params)

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
        value_and_grad(True),
        value_and_grad(False),
    )


def _stacked(params):
    """Our CLIP parameters with both towers' blocks stacked (`stack_blocks`)."""
    depth = lambda tower: len([k for k in tower["transformer"] if k.startswith("block_")])  # noqa: E731
    return {**params, **{name: {**params[name], "transformer": stack_blocks(params[name]["transformer"],
                                                                            depth(params[name]))}
                         for name in ("vision", "text")}}


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_towers_compute_the_unrolled_function(model_and_params, remat):
    """scan_layers changes the layout (one `blocks` entry, a leading `layers` axis), not the function:
    the unrolled parameters, stacked, give the same embeddings, encodings and gradients."""
    model, variables = model_and_params
    scanned = CLIP.from_config(tiny_config(scan_layers=True, remat=remat))
    images, tokens = make_inputs()
    boxed = jax.eval_shape(scanned.init, jax.random.key(0), images, tokens)["params"]
    layer = boxed["vision"]["transformer"]["blocks"]["mlp"]["fc_in"]["kernel"]
    assert layer.names == (axes.LAYERS, axes.EMBED, axes.MLP) and layer.value.shape == (2, 16, 32)
    assert set(boxed["text"]["transformer"]) == {"blocks"}

    params = nn.meta.unbox(variables["params"])
    stacked = _stacked(params)
    assert jax.tree.structure(nn.meta.unbox(boxed)) == jax.tree.structure(stacked)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 apply(scanned, {"params": stacked}, images, tokens), apply(model, {"params": params}, images, tokens))

    def loss(m, p):
        out = m.apply({"params": p}, images, tokens)
        return jnp.sum(out["image_embed"] * out["text_embed"])

    grads = jax.jit(jax.grad(functools.partial(loss, model)))(params)
    scanned_grads = jax.jit(jax.grad(functools.partial(loss, scanned)))(stacked)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), scanned_grads, _stacked(grads))


def test_scanned_blocks_are_initialised_independently_and_stack_blocks_checks_depth():
    x = jnp.ones((1, 3, 8))
    params = nn.meta.unbox(Transformer(depth=2, width=8, num_heads=2, scan=True).init(jax.random.key(0), x))
    kernel = params["params"]["blocks"]["mlp"]["fc_in"]["kernel"]
    assert kernel.shape == (2, 8, 32) and not np.allclose(kernel[0], kernel[1])
    with pytest.raises(ValueError, match="lack block_1 .expected 2 unrolled blocks"):
        stack_blocks({"block_0": {}}, 2)


def _reference_attention(params, x, context, context_mask):
    """Causal attention over [own tokens; context] written out in numpy."""
    p = jax.tree.map(np.asarray, nn.meta.unbox(params))["params"]

    def proj(name, inp):
        return np.einsum("bld,dhk->blhk", inp, p[name]["kernel"]) + p[name]["bias"]

    q = proj("query", x)
    k = np.concatenate([proj("key", x), proj("context_key", context)], axis=1)
    v = np.concatenate([proj("value", x), proj("context_value", context)], axis=1)
    length, context_length = x.shape[1], context.shape[1]
    logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
    causal = np.tril(np.ones((length, length), bool))
    allowed = np.concatenate([causal, np.ones((length, context_length), bool)], axis=1)
    key_mask = np.concatenate([np.ones((x.shape[0], length), bool), context_mask], axis=1)
    allowed = allowed[None, None] & key_mask[:, None, None, :]
    logits = np.where(allowed, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhts,bshk->bthk", weights, v)
    return np.einsum("bthk,hkd->btd", out, p["out"]["kernel"]) + p["out"]["bias"]


def test_attention_with_context_matches_reference():
    attn = MultiHeadAttention(num_heads=2, causal=True)
    kx, kc = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, (2, 5, 8))
    context = jax.random.normal(kc, (2, 3, 6))
    context_mask = jnp.array([[True, True, False], [True, False, False]])
    params = jax.jit(functools.partial(attn.init, context_mask=context_mask))(
        jax.random.key(3), x, context=context
    )
    run = jax.jit(lambda p, c: attn.apply(p, x, context=c, context_mask=context_mask))
    out = run(params, context)
    expected = _reference_attention(params, np.asarray(x), np.asarray(context), np.asarray(context_mask))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    # Masked context tokens are ignored.
    moved = context.at[:, 2].add(5.0)
    np.testing.assert_allclose(run(params, moved), out, atol=1e-6)


def test_count_params_of_the_paper_vit_h16_config():
    from dalle2_jax.data.tokenizer import make_tokenizer
    from dalle2_jax.stages.clip import resolved_model_config
    from tests.tiny import load_config

    config = load_config("configs/paper/clip_vit_h16.py")
    cfg = resolved_model_config(config, make_tokenizer(config.tokenizer))

    def blocks(width, depth):
        # q, k, v, out: 4 (w^2 + w); MLP w->4w->w: 8 w^2 + 5 w; two LayerNorms: 4 w.
        return depth * (12 * width**2 + 13 * width)

    embed, vw, tw = 1024, 1280, 1024
    patches = (256 // 16) ** 2
    vision = (
        16 * 16 * 3 * vw  # patch embedding, no bias
        + vw  # class token
        + (patches + 1) * vw  # positions
        + 2 * vw  # ln_pre
        + blocks(vw, 32)
        + 2 * vw  # ln_post
        + vw * embed  # projection, no bias
    )
    text = (
        49408 * tw  # token embedding
        + 77 * tw  # positions
        + blocks(tw, 24)
        + 2 * tw  # ln_final
        + tw * embed  # projection
    )
    expected = vision + text + 1  # + the logit scale
    count = count_params(cfg)
    print(f"CLIP ViT-H/16 parameters: {count:,}")
    assert count == expected == 986_339_841


# The parameter tree of `tiny_config(**{"vision.depth": 1, "text.depth": 1})`, as it was before
# pretrained-CLIP import grew the module: trained checkpoints depend on these names and shapes.
DEFAULT_PARAM_TREE = {
    "log_logit_scale": (),
    "text/ln_final/bias": (16,), "text/ln_final/scale": (16,), "text/position_embedding": (8, 16),
    "text/projection/kernel": (16, 8), "text/token_embedding/embedding": (259, 16),
    "vision/class_token": (16,), "vision/ln_post/bias": (16,), "vision/ln_post/scale": (16,),
    "vision/ln_pre/bias": (16,), "vision/ln_pre/scale": (16,), "vision/patch_embedding/kernel": (48, 16),
    "vision/position_embedding": (5, 16), "vision/projection/kernel": (16, 8),
    **{f"{tower}/transformer/block_0/{name}": shape for tower in ("text", "vision") for name, shape in {
        "attn/key/bias": (2, 8), "attn/key/kernel": (16, 2, 8), "attn/out/bias": (16,),
        "attn/out/kernel": (2, 8, 16), "attn/query/bias": (2, 8), "attn/query/kernel": (16, 2, 8),
        "attn/value/bias": (2, 8), "attn/value/kernel": (16, 2, 8), "ln_attn/bias": (16,),
        "ln_attn/scale": (16,), "ln_mlp/bias": (16,), "ln_mlp/scale": (16,), "mlp/fc_in/bias": (32,),
        "mlp/fc_in/kernel": (16, 32), "mlp/fc_out/bias": (16,), "mlp/fc_out/kernel": (32, 16)}.items()},
}


def test_default_model_keeps_its_parameter_tree_and_numbers(model_and_params):
    """Default configs (our own CLIPs) are unchanged by the options imported CLIPs use: the same
    parameter names and shapes, and the same embeddings from the same seed as before."""
    from flax import traverse_util

    model = CLIP.from_config(tiny_config(**{"vision.depth": 1, "text.depth": 1}))
    shapes = jax.eval_shape(model.init, jax.random.key(0), *make_inputs())["params"]
    flat = traverse_util.flatten_dict(shapes, sep="/")
    assert {path: box.value.shape for path, box in flat.items()} == DEFAULT_PARAM_TREE

    model, variables = model_and_params  # depth 2, seed 0: values recorded before the change
    out = apply(model, variables, *make_inputs())
    np.testing.assert_allclose(out["image_embed"][:, :4], [[0.08981854, 0.69719464, -0.13001402, -0.22299021],
                                                           [0.07721512, 0.6271919, -0.30497897, -0.12567644]],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["text_embed"][:, :4], [[0.07230026, -0.748328, 0.3000181, -0.02611116],
                                                          [-0.04934102, -0.62132865, 0.39952892, -0.02468991]],
                               rtol=1e-5, atol=1e-6)
    mask = apply(model, variables, make_inputs()[1], method=CLIP.encode_text)[2]
    np.testing.assert_array_equal(mask, make_inputs()[1] != 0)
