"""Group normalisation (Wu & He 2018) with ADM's adaptive modulation, as one per-channel affine map.

`nn.GroupNorm` reshapes [B, H, W, C] to [B, H, W, groups, C / groups] and reduces over three
axes, the innermost of them C / groups long (2 in the shapes decoder). Here each statistic is
reduced over the spatial axes first, with the channels innermost and contiguous, to [B, C], and
only then summed over each group's channels (a [B, C] array). Normalisation, the learned
scale and bias and AdaGN's `* (1 + scale) + shift` (Dhariwal & Nichol 2021, sec 3) then fold into
one multiply-add per element with [B, C] coefficients, so the pass over the image, and its
gradient's, do no per-group work. Same statistics as `nn.GroupNorm` (float32, the variance as
E[x^2] - E[x]^2), same parameters and names. Forward + backward of normalisation, AdaGN and SiLU
on one CPU device's share of the shapes decoder's batch (`python bench/group_norm.py`, 16 images,
2026-12-07): 0.41 against 1.14 ms at 16 x 16 x 64, 1.9 against 4.2 ms at 16 x 16 x 192; the
decoder's train step ran 7% faster (README, Benchmarks).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dalle2_jax.nn.axes import NORM


class GroupNorm(nn.Module):
    """GroupNorm over the channels-last axis, optionally modulated (AdaGN); float32 in and out.

    Attributes:
      num_groups: channel groups; must divide the channel count.
      epsilon: added to the variance.
    """

    num_groups: int
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, scale: jax.Array | None = None, shift: jax.Array | None = None) -> jax.Array:
        """Normalises [B, ..., C] `x` per example and group; with [B, C] `scale` and `shift`
        returns `GroupNorm(x) * (1 + scale) + shift`."""
        channels = x.shape[-1]
        if channels % self.num_groups:
            raise ValueError(f"{channels} channels do not divide into {self.num_groups} groups")
        gamma = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (NORM,)), (channels,),
                           jnp.float32)
        beta = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (NORM,)), (channels,),
                          jnp.float32)
        x = x.astype(jnp.float32)
        batch, per_group = x.shape[0], channels // self.num_groups
        spatial = tuple(range(1, x.ndim - 1))
        count = math.prod(x.shape[1:-1]) * per_group

        def group_mean(values: jax.Array) -> jax.Array:  # [B, C] channel sums -> [B, C] group means
            sums = values.reshape(batch, self.num_groups, per_group).sum(-1) / count
            return jnp.repeat(sums, per_group, axis=-1)

        mean = group_mean(x.sum(spatial))
        variance = jnp.maximum(group_mean(jnp.square(x).sum(spatial)) - jnp.square(mean), 0.0)
        multiplier = jax.lax.rsqrt(variance + self.epsilon) * gamma
        offset = beta - mean * multiplier
        if scale is not None:
            multiplier, offset = multiplier * (1 + scale), offset * (1 + scale)
        if shift is not None:
            offset = offset + shift
        broadcast = (batch,) + (1,) * len(spatial) + (channels,)
        return x * multiplier.reshape(broadcast) + offset.reshape(broadcast)
