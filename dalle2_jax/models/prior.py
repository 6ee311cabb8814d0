"""The unCLIP diffusion prior (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation
with CLIP Latents", sec 2.2 and appendix C).

The prior models P(z_i | y): a CLIP image embedding z_i given a caption y. The diffusion prior is
a decoder-only Transformer with a causal attention mask over a sequence of, in order, the encoded
text, the CLIP text embedding, an embedding of the diffusion timestep, the noised CLIP image
embedding, and a final learned embedding whose output predicts the denoised image embedding
(sec 2.2). The paper predicts the unnoised embedding directly; this model is agnostic: the prior
stage decides what the output means.

Classifier-free guidance (sec 2.2: the text conditioning is dropped 10% of the time in training)
is part of the model: `drop_text` swaps an example's text embedding and token encodings for
learned null ones. At sampling, guidance runs the model once on a doubled batch with
`drop_text = [False] * B + [True] * B`.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dalle2_jax.nn.attention import fan_in_init
from dalle2_jax.nn.axes import BATCH, EMBED, LENGTH
from dalle2_jax.nn.embeddings import timestep_embedding
from dalle2_jax.nn.transformer import MLP, Transformer, layer_norm

Dtype = Any

# The four tokens after the text tokens: text embedding, timestep, noised image embedding, query.
NUM_TRAILING_TOKENS = 4


def _input_projection(width: int, dtype: Dtype, name: str) -> nn.Dense:
    """Linear map from an input's features (CLIP embedding or text width) to the model width."""
    return nn.Dense(
        width,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=fan_in_init(1.0, (None, EMBED)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (EMBED,)),
        name=name,
    )


def _learned(names: tuple[str | None, ...]) -> nn.initializers.Initializer:
    return nn.with_logical_partitioning(nn.initializers.normal(0.02), names)


class DiffusionPrior(nn.Module):
    """Decoder-only Transformer diffusion prior over CLIP image embeddings (sec 2.2).

    Attributes:
      embed_dim: CLIP embedding size E (text and image embeddings).
      width: Transformer width.
      depth: number of Transformer blocks.
      num_heads: attention heads per block.
      mlp_ratio: MLP hidden width / width.
      text_width: feature size of the CLIP text token encodings.
      max_text_length: number of text tokens L (the CLIP context length).
      dtype: compute dtype; parameters and the prediction are float32.
      remat: rematerialisation policy of each block (see `dalle2_jax.nn.remat`).
      implementation: attention implementation passed to `jax.nn.dot_product_attention`.
      scan: scan the transformer's blocks instead of unrolling them (see `nn.transformer`).
    """

    embed_dim: int
    width: int
    depth: int
    num_heads: int
    text_width: int
    max_text_length: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    remat: str | bool = "none"
    implementation: str | None = None
    scan: bool = False

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict, dtype: Dtype = jnp.float32) -> "DiffusionPrior":
        """Builds the model from the `model` section of a prior config.

        Fields: width, depth, num_heads, mlp_ratio, remat, scan_layers (False); embed_dim, text_width and
        max_text_length, which the prior stage fills in from the CLIP it uses.
        """
        for name in ("embed_dim", "text_width", "max_text_length", "width", "depth", "num_heads"):
            value = cfg.get(name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if cfg.width % cfg.num_heads:
            raise ValueError(f"model.num_heads={cfg.num_heads} must divide model.width={cfg.width}")
        return cls(
            embed_dim=cfg.embed_dim,
            width=cfg.width,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            text_width=cfg.text_width,
            max_text_length=cfg.max_text_length,
            mlp_ratio=cfg.get("mlp_ratio", 4.0),
            dtype=dtype,
            remat=cfg.get("remat", "none"),
            scan=cfg.get("scan_layers", False),
        )

    def _check_shapes(self, x_t: jax.Array, text_embed: jax.Array, text_encodings: jax.Array) -> None:
        expected = {
            "x_t": (x_t.shape[1:], (self.embed_dim,)),
            "text_embed": (text_embed.shape[1:], (self.embed_dim,)),
            "text_encodings": (text_encodings.shape[1:], (self.max_text_length, self.text_width)),
        }
        for name, (got, want) in expected.items():
            if tuple(got) != want:
                raise ValueError(f"{name} has shape [B, {', '.join(map(str, got))}], the prior expects "
                                 f"[B, {', '.join(map(str, want))}]")

    @nn.compact
    def __call__(
        self,
        x_t: jax.Array,
        t: jax.Array,
        text_embed: jax.Array,
        text_encodings: jax.Array,
        text_mask: jax.Array,
        drop_text: jax.Array,
    ) -> jax.Array:
        """Predicts from a noised image embedding and its text conditioning.

        Args:
          x_t: [B, E] noised CLIP image embeddings.
          t: [B] integer timestep indices of the original (unrespaced) schedule.
          text_embed: [B, E] CLIP text embeddings.
          text_encodings: [B, L, text_width] CLIP text token encodings.
          text_mask: [B, L] bool, True for real text tokens; padding is never attended to.
          drop_text: [B] bool, True where the text conditioning is replaced by the learned null
            conditioning (classifier-free guidance).

        Returns:
          [B, E] float32 prediction (the output of the final learned query token).
        """
        self._check_shapes(x_t, text_embed, text_encodings)
        batch = x_t.shape[0]
        null_embed = self.param("null_text_embed", _learned((None,)), (self.embed_dim,), jnp.float32)
        null_encodings = self.param(
            "null_text_encodings", _learned((LENGTH, EMBED)), (self.max_text_length, self.text_width), jnp.float32
        )
        drop_text = drop_text.astype(bool)
        text_embed = jnp.where(drop_text[:, None], null_embed, text_embed.astype(jnp.float32))
        text_encodings = jnp.where(drop_text[:, None, None], null_encodings, text_encodings.astype(jnp.float32))
        text_mask = text_mask.astype(bool) | drop_text[:, None]

        text_tokens = _input_projection(self.width, self.dtype, "text_encodings_in")(text_encodings)
        text_token = _input_projection(self.width, self.dtype, "text_embed_in")(text_embed)
        time_token = MLP(hidden=self.width, dtype=self.dtype, name="time_mlp")(
            timestep_embedding(t, self.width)[:, None, :]
        )[:, 0]
        image_token = _input_projection(self.width, self.dtype, "x_t_in")(x_t)
        query = self.param("query", _learned((EMBED,)), (self.width,), jnp.float32)
        query_token = jnp.broadcast_to(query.astype(self.dtype), (batch, self.width))
        trailing = jnp.stack([text_token, time_token, image_token, query_token], axis=1)
        x = jnp.concatenate([text_tokens, trailing.astype(self.dtype)], axis=1)
        positions = self.param(
            "position_embedding",
            _learned((LENGTH, EMBED)),
            (self.max_text_length + NUM_TRAILING_TOKENS, self.width),
            jnp.float32,
        )
        x = x + positions.astype(self.dtype)
        x = nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED))

        mask = jnp.concatenate([text_mask, jnp.ones((batch, NUM_TRAILING_TOKENS), bool)], axis=1)
        x = Transformer(
            depth=self.depth,
            width=self.width,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            causal=True,
            dtype=self.dtype,
            remat=self.remat,
            implementation=self.implementation,
            scan=self.scan,
            name="transformer",
        )(x, mask)
        out = layer_norm("ln_final", jnp.float32)(x[:, -1])
        return nn.Dense(
            self.embed_dim,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            kernel_init=fan_in_init(1.0, (EMBED, None)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
            name="prediction",
        )(out)


def count_params(cfg: ml_collections.ConfigDict) -> int:
    """Number of parameters of `DiffusionPrior.from_config(cfg)`, from shapes only (nothing allocated)."""
    model = DiffusionPrior.from_config(cfg)
    embed = jax.ShapeDtypeStruct((1, cfg.embed_dim), jnp.float32)
    variables = jax.eval_shape(
        model.init,
        jax.random.key(0),
        embed,
        jax.ShapeDtypeStruct((1,), jnp.int32),
        embed,
        jax.ShapeDtypeStruct((1, cfg.max_text_length, cfg.text_width), jnp.float32),
        jax.ShapeDtypeStruct((1, cfg.max_text_length), bool),
        jax.ShapeDtypeStruct((1,), bool),
    )
    leaves = jax.tree.leaves(variables["params"], is_leaf=lambda leaf: isinstance(leaf, nn.Partitioned))
    return sum(math.prod(leaf.value.shape) for leaf in leaves)
