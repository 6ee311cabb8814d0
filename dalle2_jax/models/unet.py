"""The ADM / GLIDE UNet: the unCLIP decoder and upsamplers (Ramesh et al. 2022, sec 2.1, appendix C).

The network is the "ablated diffusion model" of Dhariwal & Nichol 2021 ("Diffusion Models Beat
GANs on Image Synthesis", sec 3): a UNet of residual blocks with GroupNorm and SiLU, BigGAN-style
residual up/down-sampling blocks (sec 3, Brock et al. 2019), self-attention at a few resolutions
with 64 channels per head, and the timestep embedding applied as adaptive group normalisation
(AdaGN, sec 3: `GroupNorm(h) * (1 + scale) + shift`, scale and shift projected from the
embedding). Residual branches and the output layer start at zero, so the network begins as the
identity on its skip paths and outputs exactly zero.

Conditioning, all optional:
  - text (GLIDE, Nichol et al. 2022, sec 2.3/4): the model's own causal `TextEncoder` encodes the
    caption; its final token's features are projected and added to the timestep embedding, and
    its token features join the keys and values of every attention layer.
  - CLIP image embedding (unCLIP sec 2.1): projected and added to the timestep embedding, and
    projected into `clip_tokens` = 4 extra context tokens placed after the text tokens.
  - low resolution image (upsamplers, unCLIP sec 2.1 / appendix C): resized bilinearly to full
    size and concatenated to x_t on channels; the upsamplers have no attention and no text/CLIP.
  - optional spatial CLIP conditioning (`clip_spatial`, off in the paper configs): the CLIP
    embedding projected to a `clip_spatial` x `clip_spatial` feature map added to the down path
    where it reaches that size. A global embedding must otherwise be turned into a layout by the
    convolutions; on shapes, where the embedding fixes the object's position, the timestep/token
    paths alone learned colors in a few hundred steps but position stayed at chance for a
    thousand (measured on the shapes decoder), so the CPU-sized config turns this on.
  - optional coordinate channels (`coordinate_channels`, off in the paper configs): the pixel's
    (x, y) in [-1, 1] concatenated to the input ("CoordConv", Liu et al. 2018). ADM's convolutions
    see absolute position only through padding; where the conditioning names a position (the
    shapes captions do) two input channels make it directly available, at negligible cost.
  - optional patches (`patch_size` p > 1, off in the paper configs): the UNet runs on p x p
    patches of the input flattened into channels and predicts the output's patches the same way
    (space-to-depth, as "simple diffusion", Hoogeboom et al. 2023, sec 3.3, does at high
    resolution). Same FLOPs per layer at twice the channels on a quarter of the positions: wider
    matmuls and fewer element-wise passes, which is what a CPU (or any matmul unit) runs best.

Classifier-free guidance (unCLIP sec 2.1: CLIP embeddings zeroed 10% of the time, captions
dropped 50%) is part of the model, as in the prior: where `drop_clip` is set the CLIP embedding
is replaced by a learned null embedding; where `drop_text` is set (or a caption has no real
token) the text tokens are masked out of every attention layer and the pooled text features are
replaced by a learned null vector. Guided sampling runs one doubled batch.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dalle2_jax.nn.attention import HeadsDense, MultiHeadAttention, fan_in_init
from dalle2_jax.nn.axes import BATCH, CONV_IN, CONV_OUT, EMBED, LENGTH, MLP, VOCAB
from dalle2_jax.nn.embeddings import timestep_embedding
from dalle2_jax.nn.group_norm import GroupNorm
from dalle2_jax.nn.patches import from_patches, to_patches
from dalle2_jax.nn.remat import remat_block
from dalle2_jax.nn.transformer import Transformer, caption_positions, layer_norm

Dtype = Any

IMAGE_AXES = (BATCH, None, None, CONV_OUT)


def num_groups(channels: int) -> int:
    """GroupNorm groups: 32 (Wu & He 2018; ADM), or the largest divisor of `channels` below 32."""
    return max(g for g in range(1, 33) if channels % g == 0)


def group_norm(channels: int, name: str) -> GroupNorm:
    """GroupNorm computed in float32 (ADM's GroupNorm32), with named scale and bias."""
    return GroupNorm(num_groups=num_groups(channels), epsilon=1e-5, name=name)


def conv(
    features: int,
    size: int,
    dtype: Dtype,
    name: str,
    zero: bool = False,
    channel_names: tuple[str | None, str | None] = (CONV_IN, CONV_OUT),
) -> nn.Conv:
    """A `size` x `size` SAME convolution: fan-in truncated-normal init, or zeros (residual outputs).

    `channel_names` name the kernel's input and output channel axes; the image side of the first
    and last convolutions (3 or 6 channels) is None, never sharded.
    """
    return nn.Conv(
        features,
        (size, size),
        padding="SAME",
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=fan_in_init(0.0 if zero else 1.0, (None, None, *channel_names)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, channel_names[1:]),
        name=name,
    )


def dense(features: int, names: tuple[str | None, str], dtype: Dtype, name: str) -> nn.Dense:
    """A fan-in initialised dense layer with logical names (input axis, output axis)."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=fan_in_init(1.0, names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]),
        name=name,
    )


def _learned(names: tuple[str | None, ...]) -> nn.initializers.Initializer:
    """N(0, 0.02^2) init (learned null conditioning, token and position embeddings)."""
    return nn.with_logical_partitioning(nn.initializers.normal(0.02), names)


def resample(x: jax.Array, direction: str) -> jax.Array:
    """Nearest-neighbour 2x upsampling ("up"), 2x2 average pooling ("down") or nothing ("none")."""
    if direction == "up":
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if direction == "down":
        return nn.avg_pool(x, (2, 2), strides=(2, 2))
    return x


class ResBlock(nn.Module):
    """ADM residual block with AdaGN timestep conditioning (Dhariwal & Nichol 2021, sec 3).

    h = conv3x3(SiLU(GN(x))); h = GN(h) * (1 + scale) + shift with (scale, shift) a projection of
    SiLU(emb); out = skip(x) + zero_conv3x3(dropout(SiLU(h))). `resample` "up"/"down" rescales
    both paths after the first normalisation (BigGAN-style up/down blocks); the skip path is a
    1x1 convolution when the channel count changes.

    Attributes:
      out_channels: output channels.
      resample: "none", "up" (nearest neighbour) or "down" (2x2 average pooling).
      dropout: dropout rate before the last convolution.
      deterministic: disables dropout.
      dtype: compute dtype.
    """

    out_channels: int
    resample: str = "none"
    dropout: float = 0.0
    deterministic: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        """[B, H, W, C] features and [B, D] embedding -> [B, H', W', out_channels] in `dtype`."""
        in_channels = x.shape[-1]
        h = nn.silu(group_norm(in_channels, "norm_in")(x)).astype(self.dtype)
        h = resample(h, self.resample)
        x = resample(x, self.resample)
        h = conv(self.out_channels, 3, self.dtype, "conv_in")(h)
        scale_shift = dense(2 * self.out_channels, (EMBED, CONV_OUT), self.dtype, "emb")(nn.silu(emb))
        scale, shift = jnp.split(scale_shift.astype(jnp.float32), 2, axis=-1)
        h = group_norm(self.out_channels, "norm_out")(h, scale, shift)
        h = nn.silu(h).astype(self.dtype)
        h = nn.Dropout(self.dropout, deterministic=self.deterministic)(h)
        h = conv(self.out_channels, 3, self.dtype, "conv_out", zero=True)(h)
        if in_channels != self.out_channels:
            x = conv(self.out_channels, 1, self.dtype, "skip")(x)
        return nn.with_logical_constraint(x.astype(self.dtype) + h, IMAGE_AXES)


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions plus the context tokens (ADM sec 3; GLIDE sec 2.3).

    x + proj(Attn(GN(x))) with `channels // head_channels` heads; the context (text and CLIP
    tokens) is projected to extra keys and values. The output projection starts at zero.
    """

    head_channels: int
    dtype: Dtype = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(
        self, x: jax.Array, context: jax.Array | None = None, context_mask: jax.Array | None = None
    ) -> jax.Array:
        """[B, H, W, C] -> [B, H, W, C]; context [B, Lc, Dc] with mask [B, Lc] (True: attend)."""
        batch, height, width, channels = x.shape
        h = group_norm(channels, "norm")(x).astype(self.dtype)
        h = MultiHeadAttention(
            num_heads=channels // self.head_channels,
            dtype=self.dtype,
            out_init_scale=0.0,
            implementation=self.implementation,
            name="attn",
        )(h.reshape(batch, height * width, channels), context=context, context_mask=context_mask)
        return nn.with_logical_constraint(x.astype(self.dtype) + h.reshape(x.shape), IMAGE_AXES)


class TextEncoder(nn.Module):
    """GLIDE's caption encoder (Nichol et al. 2022, sec 2.3): a causal pre-LN Transformer.

    Token and learned position embeddings, `depth` causal blocks and a final LayerNorm. Padding
    (what follows the end-of-text token `eot_id`; id `pad_id` where a row has none) is masked out
    of attention, and the pooled features are those of the last real token (GLIDE pools the last
    position of its fixed-length sequence; with masked padding this is the same token wherever
    the padding ends), so padding never changes the result.

    Attributes:
      vocab_size: number of token ids.
      context_length: longest caption, in tokens.
      width: Transformer width (the width of the encodings).
      depth: number of Transformer blocks.
      num_heads: attention heads per block.
      pad_id: the padding token id.
      eot_id: the end-of-text token id (None: padding is found by `pad_id` alone).
      dtype: compute dtype; encodings are float32.
      remat: rematerialisation policy of each block (see `dalle2_jax.nn.remat`).
      implementation: attention implementation passed to `jax.nn.dot_product_attention`.
      scan: scan the transformer's blocks instead of unrolling them (see `nn.transformer`).
    """

    vocab_size: int
    context_length: int
    width: int
    depth: int
    num_heads: int
    pad_id: int = 0
    eot_id: int | None = None
    dtype: Dtype = jnp.float32
    remat: str | bool = "none"
    implementation: str | None = None
    scan: bool = False

    @nn.compact
    def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Encodes [B, L] token ids (L <= context_length).

        Returns:
          encodings: [B, L, width] float32, every token's features after the final LayerNorm.
          pooled: [B, width] float32, the features of each row's last real token (arbitrary for
            a row with no real token: callers treat such a row as having no caption).
          mask: [B, L] bool, True for real tokens.
        """
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(f"{length} text tokens exceed the text encoder's context_length {self.context_length}")
        mask, last = caption_positions(tokens, self.pad_id, self.eot_id)
        x = nn.Embed(
            self.vocab_size,
            self.width,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            embedding_init=_learned((VOCAB, EMBED)),
            name="token_embedding",
        )(tokens)
        positions = self.param(
            "position_embedding", _learned((LENGTH, EMBED)), (self.context_length, self.width), jnp.float32
        )
        x = nn.with_logical_constraint(x + positions[:length].astype(self.dtype), (BATCH, LENGTH, EMBED))
        x = Transformer(
            depth=self.depth,
            width=self.width,
            num_heads=self.num_heads,
            causal=True,
            dtype=self.dtype,
            remat=self.remat,
            implementation=self.implementation,
            scan=self.scan,
            name="transformer",
        )(x, mask)
        encodings = layer_norm("ln_final", jnp.float32)(x)
        pooled = jnp.take_along_axis(encodings, last[:, None, None], axis=1)[:, 0]
        return encodings, pooled, mask


class UNet(nn.Module):
    """The ADM UNet with GLIDE/unCLIP conditioning: unCLIP's decoder and upsamplers.

    Structure (ADM sec 3): input conv; per level, `num_res_blocks` ResBlocks (each followed by
    attention where the feature map size is in `attention_resolutions`) and a down ResBlock
    except at the last level; middle ResBlock, attention (if the lowest resolution is listed),
    ResBlock; per level upwards, `num_res_blocks + 1` ResBlocks on the features concatenated
    with the matching down-path output (+ attention), and an up ResBlock except at the top;
    GroupNorm, SiLU and a zero-initialised conv to `out_channels`.

    Attributes:
      channels: base channel count; level i has `channels * channel_mults[i]`.
      channel_mults: channel multiplier per resolution level.
      num_res_blocks: ResBlocks per level on the down path.
      attention_resolutions: feature-map sizes (e.g. (32, 16, 8)) with self-attention.
      image_size: height and width of x_t.
      in_channels: channels of x_t.
      out_channels: output channels: 3 (eps / x0 / v) or 6 with a learned variance (the last
        three are the raw variance interpolation values; the stage interprets them).
      head_channels: channels per attention head.
      dropout: dropout rate inside the ResBlocks (used when `train`).
      clip_embed_dim: size of the CLIP image embedding conditioning the model (None: none).
      clip_embed_scale: factor on the (unit) CLIP embedding before its projections; sqrt of the
        embedding size gives its coordinates unit variance, like the text encoder's outputs.
      clip_tokens: number of context tokens projected from the CLIP embedding (made only when
        the model has attention layers to use them).
      context_width: width of the context tokens; defaults to the text encoder's width, or to
        the timestep-embedding width (4 * channels) without one.
      text_encoder: the caption encoder (None: no text conditioning).
      low_res_channels: channels of the low-resolution conditioning image (0: none).
      coordinate_channels: concatenate the pixel coordinates to the input (see above).
      clip_spatial: feature-map size at which the spatial CLIP projection is added (0: none).
      patch_size: side of the input patches the network runs on (1: pixels; see above).
      dtype: compute dtype; parameters and output are float32.
      remat: rematerialisation policy of each block (see `dalle2_jax.nn.remat`).
      implementation: attention implementation passed to `jax.nn.dot_product_attention`.
    """

    channels: int
    channel_mults: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    image_size: int
    in_channels: int = 3
    out_channels: int = 3
    head_channels: int = 64
    dropout: float = 0.0
    clip_embed_dim: int | None = None
    clip_embed_scale: float = 1.0
    clip_tokens: int = 4
    context_width: int | None = None
    text_encoder: TextEncoder | None = None
    low_res_channels: int = 0
    coordinate_channels: bool = False
    clip_spatial: int = 0
    patch_size: int = 1
    dtype: Dtype = jnp.float32
    remat: str | bool = "none"
    implementation: str | None = None

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict, dtype: Dtype = jnp.float32) -> "UNet":
        """Builds the model from the `model` section of a decoder or upsampler config.

        Fields: image_size, channels, channel_mults, num_res_blocks, attention_resolutions;
        optional head_channels (64), dropout (0.0), in_channels (3), out_channels (3),
        clip_embed_dim (None; the decoder stage fills it in from its CLIP), clip_embed_scale (1.0;
        runs saved before the field existed read it so), clip_tokens (4),
        context_width (None), low_res_channels (0), coordinate_channels (False), clip_spatial (0),
        patch_size (1), remat ("none"), scan_layers (False: the caption encoder's blocks unrolled)
        and text (None, or {vocab_size, context_length, width, depth, num_heads}, with optional
        pad_id (0) and eot_id).
        """
        text = cfg.get("text")
        text_encoder = None
        if text is not None:
            for name in ("vocab_size", "context_length", "width", "depth", "num_heads"):
                value = text.get(name)
                if not isinstance(value, int) or value <= 0:
                    raise ValueError(f"model.text.{name} must be a positive integer, got {value!r}")
            if text.width % text.num_heads:
                raise ValueError(f"model.text.num_heads={text.num_heads} must divide model.text.width={text.width}")
            text_encoder = TextEncoder(
                vocab_size=text.vocab_size,
                context_length=text.context_length,
                width=text.width,
                depth=text.depth,
                num_heads=text.num_heads,
                pad_id=text.get("pad_id", 0),
                eot_id=text.get("eot_id"),
                dtype=dtype,
                remat=cfg.get("remat", "none"),
                scan=cfg.get("scan_layers", False),
            )
        model = cls(
            channels=cfg.channels,
            channel_mults=tuple(cfg.channel_mults),
            num_res_blocks=cfg.num_res_blocks,
            attention_resolutions=tuple(cfg.attention_resolutions),
            image_size=cfg.image_size,
            in_channels=cfg.get("in_channels", 3),
            out_channels=cfg.get("out_channels", 3),
            head_channels=cfg.get("head_channels", 64),
            dropout=cfg.get("dropout", 0.0),
            clip_embed_dim=cfg.get("clip_embed_dim"),
            clip_embed_scale=cfg.get("clip_embed_scale", 1.0),
            clip_tokens=cfg.get("clip_tokens", 4),
            context_width=cfg.get("context_width"),
            text_encoder=text_encoder,
            low_res_channels=cfg.get("low_res_channels", 0),
            coordinate_channels=cfg.get("coordinate_channels", False),
            clip_spatial=cfg.get("clip_spatial", 0),
            patch_size=cfg.get("patch_size", 1),
            dtype=dtype,
            remat=cfg.get("remat", "none"),
        )
        model.validate()
        return model

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map size at each level, from the top (the first is image_size / patch_size)."""
        top = self.image_size // self.patch_size
        return tuple(top // 2**level for level in range(len(self.channel_mults)))

    @property
    def embed_width(self) -> int:
        """Width of the timestep embedding (4 * channels, as in ADM)."""
        return 4 * self.channels

    @property
    def resolved_context_width(self) -> int:
        """Width of the context tokens (text and CLIP) the attention layers attend to."""
        if self.context_width is not None:
            return self.context_width
        return self.text_encoder.width if self.text_encoder is not None else self.embed_width

    def validate(self) -> None:
        """Raises ValueError, naming the `model.` field, for an inconsistent architecture."""
        for name in ("channels", "num_res_blocks", "image_size", "in_channels", "out_channels", "head_channels",
                     "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if not self.channel_mults or any(not isinstance(m, int) or m <= 0 for m in self.channel_mults):
            raise ValueError(f"model.channel_mults must be positive integers, got {self.channel_mults!r}")
        divisor = self.patch_size * 2 ** (len(self.channel_mults) - 1)
        if self.image_size % divisor:
            raise ValueError(f"model.image_size={self.image_size} must be divisible by model.patch_size * "
                             f"2**(len(model.channel_mults) - 1) = {divisor}")
        for size in self.attention_resolutions:
            if size not in self.resolutions:
                raise ValueError(f"model.attention_resolutions has {size}, not one of the feature-map sizes "
                                 f"{self.resolutions}")
            channels = self.channels * self.channel_mults[self.resolutions.index(size)]
            if channels % self.head_channels:
                raise ValueError(f"model.head_channels={self.head_channels} must divide the {channels} channels "
                                 f"at resolution {size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.clip_embed_dim is not None and (self.clip_embed_dim <= 0 or self.clip_tokens <= 0):
            raise ValueError("model.clip_embed_dim and model.clip_tokens must be positive")
        if self.clip_spatial and (self.clip_embed_dim is None or self.clip_spatial not in self.resolutions):
            raise ValueError(f"model.clip_spatial={self.clip_spatial} must be one of the feature-map sizes "
                             f"{self.resolutions} of a model conditioned on CLIP")
        if self.low_res_channels < 0:
            raise ValueError(f"model.low_res_channels must be >= 0, got {self.low_res_channels}")
        if (self.text_encoder is not None and self.context_width is not None
                and self.context_width != self.text_encoder.width):
            raise ValueError(f"model.context_width={self.context_width} must equal model.text.width="
                             f"{self.text_encoder.width} (CLIP tokens join the text tokens)")

    def _check_inputs(self, x_t: jax.Array, t: jax.Array, clip_embed: jax.Array | None,
                      text_tokens: jax.Array | None, low_res: jax.Array | None,
                      drop_clip: jax.Array | None, drop_text: jax.Array | None) -> None:
        size, batch = self.image_size, x_t.shape[0]
        if x_t.shape[1:] != (size, size, self.in_channels):
            raise ValueError(f"x_t has shape {x_t.shape}, the model expects [B, {size}, {size}, {self.in_channels}]")
        for name, value in (("t", t), ("drop_clip", drop_clip), ("drop_text", drop_text)):
            if value is not None and value.shape != (batch,):
                raise ValueError(f"{name} has shape {value.shape}, expected [{batch}]")
        for name, given, wanted in (
            ("clip_embed", clip_embed, self.clip_embed_dim is not None),
            ("text_tokens", text_tokens, self.text_encoder is not None),
            ("low_res", low_res, self.low_res_channels > 0),
        ):
            if (given is not None) != wanted:
                raise ValueError(f"{name} {'is required' if wanted else 'must be None'} for this model")
        if clip_embed is not None and clip_embed.shape != (batch, self.clip_embed_dim):
            raise ValueError(f"clip_embed has shape {clip_embed.shape}, expected [{batch}, {self.clip_embed_dim}]")
        if text_tokens is not None and (text_tokens.ndim != 2 or text_tokens.shape[0] != batch):
            raise ValueError(f"text_tokens has shape {text_tokens.shape}, expected [{batch}, L]")
        if low_res is not None and (low_res.ndim != 4 or low_res.shape[0] != batch
                                    or low_res.shape[-1] != self.low_res_channels):
            raise ValueError(f"low_res has shape {low_res.shape}, expected [{batch}, h, w, {self.low_res_channels}]")

    def _conditioning(
        self,
        emb: jax.Array,
        clip_embed: jax.Array | None,
        text_tokens: jax.Array | None,
        drop_clip: jax.Array | None,
        drop_text: jax.Array | None,
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None, jax.Array | None]:
        """Adds the pooled text and CLIP embeddings to `emb`; returns it with the context, its mask and
        the CLIP embedding after guidance drops (None without CLIP conditioning)."""
        batch = emb.shape[0]
        context, context_mask = [], []
        if self.text_encoder is not None:
            encodings, pooled, mask = self.text_encoder(text_tokens)
            dropped = ~jnp.any(mask, axis=1)
            if drop_text is not None:
                dropped = dropped | drop_text.astype(bool)
            null_text = self.param("null_text_embed", _learned((EMBED,)), (self.text_encoder.width,), jnp.float32)
            pooled = jnp.where(dropped[:, None], null_text, pooled)
            emb = emb + dense(self.embed_width, (None, EMBED), self.dtype, "text_to_emb")(pooled)
            context.append(encodings.astype(self.dtype))
            context_mask.append(mask & ~dropped[:, None])
        if self.clip_embed_dim is not None:
            null_clip = self.param("null_clip_embed", _learned((None,)), (self.clip_embed_dim,), jnp.float32)
            clip_embed = clip_embed.astype(jnp.float32) * self.clip_embed_scale
            if drop_clip is not None:
                clip_embed = jnp.where(drop_clip.astype(bool)[:, None], null_clip, clip_embed)
            emb = emb + dense(self.embed_width, (None, EMBED), self.dtype, "clip_to_emb")(clip_embed)
            if self.attention_resolutions:
                tokens = HeadsDense((self.clip_tokens, self.resolved_context_width), (None, LENGTH, EMBED),
                                    dtype=self.dtype, name="clip_to_tokens")(clip_embed)
                context.append(tokens)
                context_mask.append(jnp.ones((batch, self.clip_tokens), bool))
        if not context or not self.attention_resolutions:
            return emb, None, None, clip_embed
        context = nn.with_logical_constraint(jnp.concatenate(context, axis=1), (BATCH, LENGTH, EMBED))
        return emb, context, jnp.concatenate(context_mask, axis=1), clip_embed

    def _clip_map(self, clip_embed: jax.Array, size: int, channels: int) -> jax.Array:
        """The CLIP embedding projected to a [B, size, size, channels] feature map (`clip_spatial`)."""
        flat = dense(size * size * channels, (None, CONV_OUT), self.dtype, "clip_to_map")(clip_embed)
        return nn.with_logical_constraint(flat.reshape(-1, size, size, channels), (BATCH, None, None, None))

    @nn.compact
    def __call__(
        self,
        x_t: jax.Array,
        t: jax.Array,
        clip_embed: jax.Array | None = None,
        text_tokens: jax.Array | None = None,
        low_res: jax.Array | None = None,
        drop_clip: jax.Array | None = None,
        drop_text: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        """Predicts from a noised image and its conditioning.

        Args:
          x_t: [B, H, W, in_channels] noised images.
          t: [B] timesteps (integers of the training schedule).
          clip_embed: [B, clip_embed_dim] CLIP image embeddings (models with clip_embed_dim).
          text_tokens: [B, L] caption token ids, padding id 0 (models with a text encoder).
          low_res: [B, h, w, low_res_channels] low-resolution images (upsamplers).
          drop_clip: optional [B] bool, True where the CLIP embedding is replaced by the learned
            null embedding (classifier-free guidance).
          drop_text: optional [B] bool, True where the caption is removed: its tokens are masked
            out of attention and its pooled features replaced by a learned null vector.
          train: enables dropout (needs a "dropout" rng).

        Returns:
          [B, H, W, out_channels] float32.
        """
        self.validate()
        self._check_inputs(x_t, t, clip_embed, text_tokens, low_res, drop_clip, drop_text)
        batch, size = x_t.shape[0], self.image_size
        emb = timestep_embedding(t, self.channels)
        emb = dense(self.embed_width, (None, MLP), self.dtype, "time_embed_in")(emb)
        emb = dense(self.embed_width, (MLP, EMBED), self.dtype, "time_embed_out")(nn.silu(emb))
        emb, context, context_mask, clip_embed = self._conditioning(emb, clip_embed, text_tokens, drop_clip,
                                                                    drop_text)
        emb = nn.with_logical_constraint(emb, (BATCH, EMBED))

        h = x_t.astype(self.dtype)
        if low_res is not None:
            upsampled = jax.image.resize(low_res.astype(jnp.float32), (batch, size, size, self.low_res_channels),
                                         "bilinear")
            h = jnp.concatenate([h, upsampled.astype(self.dtype)], axis=-1)
        if self.coordinate_channels:
            axis = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size * 2 - 1
            grid = jnp.stack(jnp.meshgrid(axis, axis, indexing="xy"), axis=-1)
            h = jnp.concatenate([h, jnp.broadcast_to(grid, (batch, size, size, 2)).astype(self.dtype)], axis=-1)
        h = to_patches(h, self.patch_size)

        res_block = remat_block(ResBlock, self.remat)
        attn_block = remat_block(AttentionBlock, self.remat)

        def res(out_channels: int, name: str, direction: str = "none") -> ResBlock:
            return res_block(out_channels, direction, self.dropout, not train, self.dtype, name=name)

        def attend(x: jax.Array, resolution: int, name: str) -> jax.Array:
            if resolution not in self.attention_resolutions:
                return x
            return attn_block(self.head_channels, self.dtype, self.implementation, name=name)(
                x, context, context_mask)

        h = conv(self.channels * self.channel_mults[0], 3, self.dtype, "conv_in", channel_names=(None, CONV_OUT))(h)
        h = nn.with_logical_constraint(h, IMAGE_AXES)
        skips = [h]
        last_level = len(self.channel_mults) - 1
        for level, (mult, resolution) in enumerate(zip(self.channel_mults, self.resolutions)):
            if resolution == self.clip_spatial:
                h = h + self._clip_map(clip_embed, resolution, h.shape[-1])
            for i in range(self.num_res_blocks):
                h = res(self.channels * mult, f"down_{level}_res_{i}")(h, emb)
                h = attend(h, resolution, f"down_{level}_attn_{i}")
                skips.append(h)
            if level != last_level:
                h = res(h.shape[-1], f"down_{level}_downsample", "down")(h, emb)
                skips.append(h)

        h = res(h.shape[-1], "middle_res_0")(h, emb)
        h = attend(h, self.resolutions[-1], "middle_attn")
        h = res(h.shape[-1], "middle_res_1")(h, emb)

        for level in reversed(range(len(self.channel_mults))):
            channels, resolution = self.channels * self.channel_mults[level], self.resolutions[level]
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = res(channels, f"up_{level}_res_{i}")(h, emb)
                h = attend(h, resolution, f"up_{level}_attn_{i}")
            if level:
                h = res(channels, f"up_{level}_upsample", "up")(h, emb)

        h = nn.silu(group_norm(h.shape[-1], "norm_out")(h))
        out = conv(self.out_channels * self.patch_size**2, 3, jnp.float32, "conv_out", zero=True,
                   channel_names=(CONV_IN, None))(h)
        return nn.with_logical_constraint(from_patches(out, self.patch_size), (BATCH, None, None, None))


def count_params(cfg: ml_collections.ConfigDict) -> int:
    """Number of parameters of `UNet.from_config(cfg)`, from shapes only (nothing allocated)."""
    model = UNet.from_config(cfg)
    size = model.image_size
    inputs: dict[str, jax.ShapeDtypeStruct] = {
        "x_t": jax.ShapeDtypeStruct((1, size, size, model.in_channels), jnp.float32),
        "t": jax.ShapeDtypeStruct((1,), jnp.int32),
    }
    if model.clip_embed_dim is not None:
        inputs["clip_embed"] = jax.ShapeDtypeStruct((1, model.clip_embed_dim), jnp.float32)
    if model.text_encoder is not None:
        inputs["text_tokens"] = jax.ShapeDtypeStruct((1, model.text_encoder.context_length), jnp.int32)
    if model.low_res_channels:
        inputs["low_res"] = jax.ShapeDtypeStruct((1, size, size, model.low_res_channels), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), **inputs)
    leaves = jax.tree.leaves(variables["params"], is_leaf=lambda leaf: isinstance(leaf, nn.Partitioned))
    return sum(math.prod(leaf.value.shape) for leaf in leaves)
