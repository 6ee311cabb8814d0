"""Pre-LayerNorm transformer: the stack used by CLIP's towers and the diffusion prior.

Each block is `x + Attn(LN(x))` followed by `x + MLP(LN(x))` (the pre-LN arrangement of GPT-2,
Radford et al. 2019, used by CLIP, Radford et al. 2021, sec 2.4, and by ViT, Dosovitskiy et al.
2021, sec 3.1, eqs. 2-3). Output projections of the residual branches start with variance
1 / (2 * depth) so the residual stream keeps its scale at initialisation, as in GPT-2 and CLIP.

With `scan=True` the blocks are one `nn.scan` over a stacked block (parameters under `blocks`,
each with a leading `layers` axis of size depth) instead of `block_0` ... `block_{depth-1}`:
the same function, but the compiled program holds one block instead of depth copies, which
keeps the compile time and the compiler's memory of deep stacks (ViT-H's 32 blocks) small, as
MaxText's `scan_layers` does. `stack_blocks` turns the unrolled layout into the scanned one.
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dalle2_jax.nn.attention import MultiHeadAttention, fan_in_init
from dalle2_jax.nn.axes import BATCH, EMBED, LAYERS, LENGTH, NORM
from dalle2_jax.nn.axes import MLP as MLP_AXIS
from dalle2_jax.nn.remat import remat_block

Dtype = Any


def quick_gelu(x: jax.Array) -> jax.Array:
    """The sigmoid approximation of GELU, x * sigmoid(1.702 x), that OpenAI's CLIP uses."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "quick_gelu": quick_gelu,
}


def caption_positions(tokens: jax.Array, pad_id: int, eot_id: int | None) -> tuple[jax.Array, jax.Array]:
    """(mask, last) of [B, L] caption rows `[SOT, tokens..., EOT, PAD...]`: mask [B, L] is True for
    the real tokens, those up to the first end-of-text token (start and end included), and last [B]
    is the index of that end token. A row without one (or `eot_id` None) counts every id other
    than `pad_id` as real and ends at its last real token. Padding is found by position, not id,
    because a tokenizer's padding id can also be a real token (CLIP's BPE pads with 0, the id of "!").
    """
    length = tokens.shape[1]
    not_pad = tokens != pad_id
    fallback_last = length - 1 - jnp.argmax(not_pad[:, ::-1], axis=1)
    if eot_id is None:
        return not_pad, fallback_last
    is_eot = tokens == eot_id
    has_eot = jnp.any(is_eot, axis=1)
    last = jnp.where(has_eot, jnp.argmax(is_eot, axis=1), fallback_last)
    mask = jnp.where(has_eot[:, None], jnp.arange(length) <= last[:, None], not_pad)
    return mask, last


def layer_norm(name: str, dtype: Dtype = jnp.float32) -> nn.LayerNorm:
    """LayerNorm with named parameters; statistics in float32, output in `dtype`.

    epsilon 1e-5 as in CLIP (and PyTorch), so imported weights give the same numbers.
    """
    return nn.LayerNorm(
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (NORM,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (NORM,)),
        name=name,
    )


class MLP(nn.Module):
    """Position-wise feed-forward block: Dense -> activation -> Dense.

    Attributes:
      hidden: hidden width.
      dtype: compute dtype.
      activation: "gelu" (exact) or "quick_gelu" (OpenAI CLIP's weights were trained with it).
      out_init_scale: variance scale of the output projection's init.
    """

    hidden: int
    dtype: Dtype = jnp.float32
    activation: str = "gelu"
    out_init_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, L, D] -> [B, L, D]."""
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        h = nn.Dense(
            self.hidden,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=fan_in_init(1.0, (EMBED, MLP_AXIS)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (MLP_AXIS,)),
            name="fc_in",
        )(x)
        h = nn.with_logical_constraint(h, (BATCH, LENGTH, MLP_AXIS))
        h = ACTIVATIONS[self.activation](h)
        return nn.Dense(
            x.shape[-1],
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=fan_in_init(self.out_init_scale, (MLP_AXIS, EMBED)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (EMBED,)),
            name="fc_out",
        )(h)


class TransformerBlock(nn.Module):
    """One pre-LN residual block: x + Attn(LN(x)), then x + MLP(LN(x)).

    Attributes mirror `Transformer`; `out_init_scale` is the variance scale of both residual
    branches' output projections.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    causal: bool = False
    dtype: Dtype = jnp.float32
    activation: str = "gelu"
    out_init_scale: float = 1.0
    implementation: str | None = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
    ) -> jax.Array:
        """[B, L, D] -> [B, L, D]; arguments as in `MultiHeadAttention`."""
        x = nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED))
        h = layer_norm("ln_attn", self.dtype)(x)
        x = x + MultiHeadAttention(
            num_heads=self.num_heads,
            causal=self.causal,
            dtype=self.dtype,
            out_init_scale=self.out_init_scale,
            implementation=self.implementation,
            name="attn",
        )(h, mask, context, context_mask)
        x = nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED))
        h = layer_norm("ln_mlp", self.dtype)(x)
        x = x + MLP(
            hidden=int(x.shape[-1] * self.mlp_ratio),
            dtype=self.dtype,
            activation=self.activation,
            out_init_scale=self.out_init_scale,
            name="mlp",
        )(h)
        return nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED))


class Transformer(nn.Module):
    """A stack of `depth` pre-LN blocks of width `width`.

    Attributes:
      depth: number of blocks.
      width: residual-stream width D (checked against the input).
      num_heads: attention heads per block (head size width // num_heads).
      mlp_ratio: MLP hidden width / D.
      causal: causal self-attention (the text tower of CLIP, the diffusion prior).
      dtype: compute dtype; parameters are float32.
      remat: rematerialisation policy of each block (see `dalle2_jax.nn.remat`).
      activation: MLP activation, "gelu" or "quick_gelu".
      implementation: attention implementation passed to `jax.nn.dot_product_attention`.
      scan: scan one stacked block over the depth instead of unrolling the blocks (module doc).
    """

    depth: int
    width: int
    num_heads: int
    mlp_ratio: float = 4.0
    causal: bool = False
    dtype: Dtype = jnp.float32
    remat: str | bool = "none"
    activation: str = "gelu"
    implementation: str | None = None
    scan: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
    ) -> jax.Array:
        """[B, L, width] -> [B, L, width]; arguments as in `MultiHeadAttention`."""
        if x.shape[-1] != self.width:
            raise ValueError(f"input width {x.shape[-1]} != transformer width {self.width}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        block = functools.partial(
            remat_block(TransformerBlock, self.remat),
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            causal=self.causal,
            dtype=self.dtype,
            activation=self.activation,
            out_init_scale=1.0 / (2 * self.depth),
            implementation=self.implementation,
        )
        if not self.scan:
            for i in range(self.depth):
                x = block(name=f"block_{i}")(x, mask, context, context_mask)
            return x

        def body(module: TransformerBlock, carry: jax.Array, *args: jax.Array | None) -> tuple[jax.Array, None]:
            return module(carry, *args), None

        scanned = nn.scan(
            body,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
            length=self.depth,
            metadata_params={nn.PARTITION_NAME: LAYERS},
        )
        x, _ = scanned(block(name="blocks"), x, mask, context, context_mask)
        return x


def stack_blocks(params: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """A `Transformer`'s parameters in the unrolled layout (`block_0` ...) -> the scanned layout
    (`blocks`, every leaf stacked on a new leading axis); other entries are kept."""
    names = [f"block_{i}" for i in range(depth)]
    missing = [name for name in names if name not in params]
    if missing:
        raise ValueError(f"transformer parameters lack {missing[0]} (expected {depth} unrolled blocks)")
    rest = {key: value for key, value in params.items() if key not in names}
    return {**rest, "blocks": jax.tree.map(lambda *leaves: np.stack(leaves), *(params[name] for name in names))}
