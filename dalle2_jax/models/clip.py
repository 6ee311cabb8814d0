"""CLIP: contrastive language-image pre-training (Radford et al. 2021).

unCLIP (Ramesh et al. 2022, sec 2) builds on a CLIP model: the prior maps its text embedding to
its image embedding, and the decoder inverts the image embedding. This file has the two encoders
of CLIP sec 2.4 (a Vision Transformer and a causal text Transformer, each ending in a linear
projection to the shared embedding space) and the learned temperature of sec 2.5. The
contrastive loss lives in the CLIP stage, not here.

The same module computes OpenAI's and OpenCLIP's ViT CLIPs, whose weights
`python -m dalle2_jax.convert_clip` imports (agreement with OpenCLIP to ~1e-6 is tested): a
LayerNorm before the vision transformer, class-token pooling, bias-free projections, a final
LayerNorm, causal text attention pooled at the end-of-text token, a logit scale capped at 100,
and quick GELU (`activation="quick_gelu"`) for OpenAI's weights.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dalle2_jax.nn.axes import BATCH, EMBED, LENGTH, PATCH, VOCAB
from dalle2_jax.nn.patches import to_patches
from dalle2_jax.nn.transformer import Transformer, caption_positions, layer_norm

Dtype = Any

# CLIP sec 2.5: the temperature starts at 0.07 and the logit scale is clipped at 100.
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


def _embedding_init(names: tuple[str, ...]) -> nn.initializers.Initializer:
    return nn.with_logical_partitioning(nn.initializers.normal(0.02), names)


def _projection(embed_dim: int) -> nn.Dense:
    """Linear map (no bias) from a tower's width to the shared embedding, in float32."""
    return nn.Dense(
        embed_dim,
        use_bias=False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (EMBED, None)),
        name="projection",
    )


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / ||x|| along the last axis, in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


class VisionTransformer(nn.Module):
    """CLIP's image encoder: a ViT (Dosovitskiy et al. 2021, sec 3.1; CLIP sec 2.4).

    Non-overlapping patches are flattened and linearly embedded; a learned class token is
    prepended and learned position embeddings added; CLIP adds a LayerNorm before the
    transformer. The class token's output, layer-normalised, is projected to `embed_dim`.
    """

    image_size: int
    patch_size: int
    width: int
    depth: int
    num_heads: int
    embed_dim: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    remat: str | bool = "none"
    activation: str = "gelu"
    implementation: str | None = None
    scan: bool = False

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """[B, image_size, image_size, C] normalised floats -> [B, embed_dim] float32."""
        batch, height, width, _ = images.shape
        if height != self.image_size or width != self.image_size:
            raise ValueError(
                f"images are {height}x{width}, the model expects {self.image_size}x{self.image_size}"
            )
        patches = to_patches(images, self.patch_size)
        patches = patches.reshape(batch, -1, patches.shape[-1])
        x = nn.Dense(
            self.width,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (PATCH, EMBED)),
            name="patch_embedding",
        )(patches.astype(self.dtype))
        class_token = self.param("class_token", _embedding_init((EMBED,)), (self.width,), jnp.float32)
        positions = self.param(
            "position_embedding",
            _embedding_init((LENGTH, EMBED)),
            (patches.shape[1] + 1, self.width),
            jnp.float32,
        )
        class_tokens = jnp.broadcast_to(class_token.astype(self.dtype), (batch, 1, self.width))
        x = jnp.concatenate([class_tokens, x], axis=1) + positions.astype(self.dtype)
        x = layer_norm("ln_pre", self.dtype)(x)
        x = nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED))
        x = Transformer(
            depth=self.depth,
            width=self.width,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            dtype=self.dtype,
            remat=self.remat,
            activation=self.activation,
            implementation=self.implementation,
            scan=self.scan,
            name="transformer",
        )(x)
        pooled = layer_norm("ln_post", jnp.float32)(x[:, 0])
        return _projection(self.embed_dim)(pooled)


class TextTransformer(nn.Module):
    """CLIP's text encoder: a causal Transformer (CLIP sec 2.4).

    The features of the end-of-text token, at its first occurrence in each row, are
    layer-normalised and projected to `embed_dim` (OpenAI's CLIP pools at the largest id, its
    end-of-text token: the same position); a row with no end-of-text token (our tokenizers
    always write one) is pooled at its last non-padding token (`caption_positions`).
    Padding follows the end-of-text token, so causal attention alone keeps it out of every real
    token's features.
    """

    context_length: int
    vocab_size: int
    width: int
    depth: int
    num_heads: int
    embed_dim: int
    eot_token_id: int
    mlp_ratio: float = 4.0
    pad_id: int = 0
    dtype: Dtype = jnp.float32
    remat: str | bool = "none"
    activation: str = "gelu"
    implementation: str | None = None
    scan: bool = False

    @nn.compact
    def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Encodes [B, L] token ids (L <= context_length).

        Returns:
          pooled: [B, embed_dim] float32, the projected end-of-text features.
          encodings: [B, L, width] float32, every token's features after the final LayerNorm.
          mask: [B, L] bool, True for real tokens: those up to the first end-of-text token (start
            and end included); in a row without one, those whose id is not pad_id.
        """
        batch, length = tokens.shape
        if length > self.context_length:
            raise ValueError(f"{length} tokens exceed context_length {self.context_length}")
        x = nn.Embed(
            self.vocab_size,
            self.width,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            embedding_init=_embedding_init((VOCAB, EMBED)),
            name="token_embedding",
        )(tokens)
        positions = self.param(
            "position_embedding",
            _embedding_init((LENGTH, EMBED)),
            (self.context_length, self.width),
            jnp.float32,
        )
        x = x + positions[:length].astype(self.dtype)
        x = nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED))
        x = Transformer(
            depth=self.depth,
            width=self.width,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            causal=True,
            dtype=self.dtype,
            remat=self.remat,
            activation=self.activation,
            implementation=self.implementation,
            scan=self.scan,
            name="transformer",
        )(x)
        encodings = layer_norm("ln_final", jnp.float32)(x)
        mask, eot_index = caption_positions(tokens, self.pad_id, self.eot_token_id)
        pooled = encodings[jnp.arange(batch), eot_index]
        return _projection(self.embed_dim)(pooled), encodings, mask


class CLIP(nn.Module):
    """The two CLIP encoders and the learned temperature (CLIP sec 2.4-2.5).

    `encode_image` and `encode_text` give the unnormalised projected embeddings (call them with
    `model.apply(params, x, method=CLIP.encode_image)`); `__call__` gives the L2-normalised
    embeddings and the logit scale exp(t), t learned, initialised at log(1 / 0.07) and capped
    so the scale never exceeds 100.
    """

    vision: VisionTransformer
    text: TextTransformer

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict, dtype: Dtype = jnp.float32) -> "CLIP":
        """Builds the model from the `model` section of a CLIP config.

        Fields: embed_dim; vision.{image_size, patch_size, width, depth, num_heads, mlp_ratio};
        text.{context_length, vocab_size, width, depth, num_heads, mlp_ratio, eot_token_id};
        remat; optional activation ("gelu" or "quick_gelu", default "gelu") and scan_layers (False:
        see `nn.transformer`; the parameter layout follows it).
        """
        vision, text = cfg.vision, cfg.text
        if vision.image_size % vision.patch_size:
            raise ValueError(
                f"model.vision.patch_size={vision.patch_size} must divide "
                f"model.vision.image_size={vision.image_size}"
            )
        for name, tower in (("vision", vision), ("text", text)):
            if tower.width % tower.num_heads:
                raise ValueError(
                    f"model.{name}.num_heads={tower.num_heads} must divide model.{name}.width={tower.width}"
                )
        if not 0 <= text.eot_token_id < text.vocab_size:
            raise ValueError(
                f"model.text.eot_token_id={text.eot_token_id} is outside the vocabulary "
                f"(model.text.vocab_size={text.vocab_size})"
            )
        def tower(section: ml_collections.ConfigDict, **specific: Any) -> dict[str, Any]:
            return dict(width=section.width, depth=section.depth, num_heads=section.num_heads,
                        mlp_ratio=section.get("mlp_ratio", 4.0), embed_dim=cfg.embed_dim, dtype=dtype,
                        remat=cfg.get("remat", "none"), activation=cfg.get("activation", "gelu"),
                        scan=cfg.get("scan_layers", False), **specific)

        return cls(
            vision=VisionTransformer(**tower(vision, image_size=vision.image_size, patch_size=vision.patch_size)),
            text=TextTransformer(**tower(text, context_length=text.context_length, vocab_size=text.vocab_size,
                                         eot_token_id=text.eot_token_id)),
        )

    def encode_image(self, images: jax.Array) -> jax.Array:
        """[B, H, W, C] normalised images -> [B, embed_dim] float32 (unnormalised)."""
        return self.vision(images)

    def encode_text(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """[B, L] token ids -> (embedding [B, E], encodings [B, L, width], mask [B, L])."""
        return self.text(tokens)

    @nn.compact
    def __call__(self, images: jax.Array, tokens: jax.Array) -> dict[str, jax.Array]:
        """Returns image_embed and text_embed ([B, E], unit norm, float32) and logit_scale."""
        log_logit_scale = self.param(
            "log_logit_scale",
            nn.with_logical_partitioning(nn.initializers.constant(LOGIT_SCALE_INIT), ()),
            (),
            jnp.float32,
        )
        return {
            "image_embed": l2_normalize(self.encode_image(images)),
            "text_embed": l2_normalize(self.encode_text(tokens)[0]),
            "logit_scale": jnp.exp(jnp.minimum(log_logit_scale, LOGIT_SCALE_MAX)),
        }


def count_params(cfg: ml_collections.ConfigDict) -> int:
    """Number of parameters of `CLIP.from_config(cfg)`, from shapes only (nothing allocated)."""
    model = CLIP.from_config(cfg)
    images = jax.ShapeDtypeStruct((1, cfg.vision.image_size, cfg.vision.image_size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((1, cfg.text.context_length), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images, tokens)
    leaves = jax.tree.leaves(variables["params"], is_leaf=lambda leaf: isinstance(leaf, nn.Partitioned))
    return sum(math.prod(leaf.value.shape) for leaf in leaves)
