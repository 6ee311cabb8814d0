"""Tests for dalle2_jax.nn.group_norm: GroupNorm with AdaGN folded into one per-channel affine map."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dalle2_jax.nn.group_norm import GroupNorm


def _inputs(shape=(3, 5, 4, 12)):
    keys = jax.random.split(jax.random.key(0), 5)
    x = 3.0 * jax.random.normal(keys[0], shape) + 1.5  # an offset and spread for the statistics to remove
    params = {"scale": 1 + 0.3 * jax.random.normal(keys[1], shape[-1:]),
              "bias": 0.3 * jax.random.normal(keys[2], shape[-1:])}
    scale = jax.random.normal(keys[3], (shape[0], shape[-1]))
    shift = jax.random.normal(keys[4], (shape[0], shape[-1]))
    return x, {"params": params}, scale, shift


@pytest.mark.parametrize("groups", [1, 4, 12])
def test_matches_flax_group_norm_values_and_gradients(groups):
    x, variables, _, _ = _inputs()
    ours, theirs = GroupNorm(groups), nn.GroupNorm(num_groups=groups, epsilon=1e-5)
    np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), atol=2e-5)
    weights = jax.random.normal(jax.random.key(1), x.shape)
    grads = [jax.grad(lambda v, x, m=m: jnp.sum(m.apply(v, x) ** 2 * weights), argnums=(0, 1))(variables, x)
             for m in (ours, theirs)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_adaptive_modulation_is_scale_then_shift():
    x, variables, scale, shift = _inputs()
    plain = GroupNorm(4).apply(variables, x)
    np.testing.assert_allclose(GroupNorm(4).apply(variables, x, scale, shift),
                               plain * (1 + scale[:, None, None]) + shift[:, None, None], atol=2e-5)
    np.testing.assert_allclose(GroupNorm(4).apply(variables, x, None, shift), plain + shift[:, None, None],
                               atol=2e-5)


def test_normalises_each_example_and_group_in_float32():
    x, _, _, _ = _inputs((2, 6, 6, 8))
    module = GroupNorm(2)
    y = module.apply(module.init(jax.random.key(0), x), x.astype(jnp.bfloat16))
    assert y.dtype == jnp.float32
    groups = np.asarray(y).reshape(2, 36, 2, 4)
    np.testing.assert_allclose(groups.mean((1, 3)), 0.0, atol=2e-2)  # bfloat16 input: 3 digits
    np.testing.assert_allclose(groups.std((1, 3)), 1.0, atol=2e-2)


def test_parameters_and_their_axis_names_are_flax_s():
    x, _, _, _ = _inputs()
    ours = GroupNorm(4).init(jax.random.key(0), x)["params"]
    assert jax.tree.map(jnp.shape, nn.unbox(ours)) == {"scale": (12,), "bias": (12,)}
    assert ours["scale"].names == ("norm",) and ours["bias"].names == ("norm",)


def test_channels_that_do_not_divide_into_groups_are_an_error():
    x = jnp.zeros((1, 2, 2, 6))
    with pytest.raises(ValueError, match="6 channels do not divide into 4 groups"):
        GroupNorm(4).init(jax.random.key(0), x)
