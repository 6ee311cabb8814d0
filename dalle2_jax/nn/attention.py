"""Multi-head dot-product attention (Vaswani et al. 2017, "Attention Is All You Need", sec 3.2).

One module serves every model: the towers of CLIP (Radford et al. 2021, sec 2.4), the causal
transformer of the diffusion prior (Ramesh et al. 2022, sec 2.2) and the attention layers of the
decoder UNet, which attend to their own tokens and to the projected text tokens together
(GLIDE, Nichol et al. 2022, sec 2.3: the context is projected to keys/values and concatenated to
those of the layer's own tokens).

Attention itself is `jax.nn.dot_product_attention`: logits and softmax in float32, and cuDNN's
fused kernel on GPU when `implementation="cudnn"`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dalle2_jax.nn.axes import EMBED, HEADS, KV

Dtype = Any


def fan_in_init(scale: float, names: tuple[str, ...]) -> nn.initializers.Initializer:
    """Truncated-normal fan-in init (LeCun normal times `scale`) with logical axis names."""
    return nn.with_logical_partitioning(
        nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal"), names
    )


class HeadsDense(nn.Module):
    """A dense layer over the last `num_in_axes` input axes to output axes `features`.

    Like `nn.DenseGeneral`, but the kernel is created in its full shape, so its logical names
    (`names`, input axes then output axes) describe it directly: DenseGeneral creates a flat
    kernel and reshapes it, which breaks logical sharding constraints during init.
    """

    features: tuple[int, ...]
    names: tuple[str, ...]
    num_in_axes: int = 1
    init_scale: float = 1.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[-self.num_in_axes:]
        n_in, n_out = len(in_shape), len(self.features)
        init = nn.initializers.variance_scaling(
            self.init_scale, "fan_in", "truncated_normal",
            in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, n_in + n_out)))
        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.names),
                            (*in_shape, *self.features), jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.names[n_in:]),
                          self.features, jnp.float32)
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                                ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))
        return y + bias.astype(self.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention, optionally causal, optionally also over a context.

    Attributes:
      num_heads: number of attention heads.
      head_dim: features per head; defaults to `width // num_heads` (width: the input's last dim).
      causal: each token attends only to tokens at its position or before (context tokens, if
        any, stay visible to every token).
      dtype: compute dtype of the projections; logits and softmax are always float32.
      out_init_scale: variance scale of the output projection's init (a residual branch in a
        deep stack uses 1 / (2 * depth), as GPT-2 and CLIP do).
      implementation: passed to `jax.nn.dot_product_attention` (None, "xla" or "cudnn").
    """

    num_heads: int
    head_dim: int | None = None
    causal: bool = False
    dtype: Dtype = jnp.float32
    out_init_scale: float = 1.0
    implementation: str | None = None

    def _project(self, name: str, head_dim: int) -> "HeadsDense":
        return HeadsDense((self.num_heads, head_dim), (EMBED, HEADS, KV), dtype=self.dtype, name=name)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Attends from `x` to `x` (and to `context` when given).

        Args:
          x: [B, L, D] tokens.
          mask: optional [B, L] boolean, True for real tokens; padding is never attended to.
          context: optional [B, Lc, Dc] tokens projected to extra keys/values, placed after
            those of `x`.
          context_mask: optional [B, Lc] boolean, True for real context tokens.

        Returns:
          [B, L, D] in `dtype`.
        """
        batch, length, width = x.shape
        if self.head_dim is None:
            if width % self.num_heads:
                raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
            head_dim = width // self.num_heads
        else:
            head_dim = self.head_dim

        query = self._project("query", head_dim)(x)
        key = self._project("key", head_dim)(x)
        value = self._project("value", head_dim)(x)
        key_mask = mask
        is_causal = self.causal
        attn_mask = None
        if context is not None:
            context_length = context.shape[1]
            key = jnp.concatenate([key, self._project("context_key", head_dim)(context)], axis=1)
            value = jnp.concatenate([value, self._project("context_value", head_dim)(context)], axis=1)
            if mask is not None or context_mask is not None:
                if mask is None:
                    mask = jnp.ones((batch, length), bool)
                if context_mask is None:
                    context_mask = jnp.ones((batch, context_length), bool)
                key_mask = jnp.concatenate([mask, context_mask], axis=1)
            if self.causal:
                # Causal over the own tokens only; every token sees the whole context.
                positions = jnp.arange(length)
                own = positions[:, None] >= positions[None, :]
                seen = jnp.concatenate([own, jnp.ones((length, context_length), bool)], axis=1)
                attn_mask = seen[None, None]
                is_causal = False
        if key_mask is not None:
            padding = key_mask.astype(bool)[:, None, None, :]
            attn_mask = padding if attn_mask is None else attn_mask & padding

        out = jax.nn.dot_product_attention(
            query,
            key,
            value,
            mask=attn_mask,
            is_causal=is_causal,
            implementation=self.implementation,
        )
        return HeadsDense((width,), (HEADS, KV, EMBED), num_in_axes=2, init_scale=self.out_init_scale,
                          dtype=self.dtype, name="out")(out)
