"""The decoder stage (unCLIP sec. 2.1): CLIP image embedding (+ caption) -> 64 px image (32 px here).

A GLIDE/ADM UNet (`models/unet.py`) conditioned on the CLIP image embedding of the training image
(projected into the timestep embedding and into 4 extra context tokens) and on the caption
through its own text encoder. For classifier-free guidance the CLIP embedding is replaced by a
learned null embedding `decoder.clip_drop_prob` of the time (paper: 10%) and the caption dropped
`decoder.text_drop_prob` of the time (paper: 50%); guided sampling drops both in the
unconditional half.

The CLIP embeddings are computed inside the train step by the frozen CLIP named by
`clip.workdir` (or a converted pretrained CLIP named by `clip.pretrained`; its parameters are an
input of the step, never trained): the decoder needs the embedding of exactly the image it
denoises, a CLIP forward pass costs a few percent of the UNet's work, and nothing has to be
stored or kept in sync on disk. Images are resized to CLIP's resolution when the two differ.

Evaluation decodes the true CLIP image embeddings of the first `decoder.eval_limit` examples of
each eval split and, on shapes, scores the attributes of the decoded images with the project's
evaluator (`evaluation/shapes_attributes.py`); a grid of sources and decodings is written with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dalle2_jax import images
from dalle2_jax.data import pipeline
from dalle2_jax.evaluation import shapes_attributes
from dalle2_jax.models.unet import UNet
from dalle2_jax.parallel.mesh import ConfigError
from dalle2_jax.stages import image_diffusion
from dalle2_jax.stages.base import Stage
from dalle2_jax.stages.clip import to_model_images
from dalle2_jax.stages.frozen_clip import FrozenClip, clip_dir, clip_section

EVAL_SPLITS = ("validation", "heldout")
GRID_EXAMPLES = 16  # source/decoded pairs shown in each eval grid


def model_config() -> ml_collections.ConfigDict:
    """The `model` section: the UNet (see `UNet.from_config`); the stage fills in the CLIP size,
    the output channels and the tokenizer's vocabulary and context length."""
    m = ml_collections.ConfigDict()
    m.image_size = 32  # must equal data.resolution
    m.channels = 64  # base channels
    m.channel_mults = (1, 2, 2)  # per resolution level
    m.num_res_blocks = 1  # per level on the down path
    m.attention_resolutions = (8,)  # feature-map sizes with attention (they see the text + CLIP tokens)
    m.head_channels = 64  # channels per attention head (paper: 64)
    m.dropout = 0.0  # inside the residual blocks
    m.clip_embed_scale = 0.0  # factor on the unit CLIP embedding inside the UNet (0 = sqrt(embed dim))
    m.clip_tokens = 4  # context tokens projected from the CLIP embedding (paper: 4)
    m.coordinate_channels = False  # (x, y) input channels (not in the paper; see models/unet.py)
    m.clip_spatial = 0  # add a spatial projection of CLIP at this feature-map size (0 = off; not in the paper)
    m.patch_size = 1  # run on p x p patches flattened into channels (1 = pixels; not in the paper)
    m.remat = "none"  # block rematerialisation: none | full | dots_saveable | ... (dalle2_jax.nn.remat)
    m.scan_layers = False  # scan the transformer blocks (smaller compiles of deep stacks; nn.transformer)
    m.text = ml_collections.ConfigDict()
    m.text.width = 64  # caption encoder width (0 = no caption conditioning)
    m.text.depth = 1  # caption encoder blocks
    m.text.num_heads = 1  # caption encoder heads
    return m


def stage_sections() -> dict[str, ml_collections.ConfigDict]:
    decoder = ml_collections.ConfigDict()
    decoder.clip_drop_prob = 0.1  # replace the CLIP embedding by the learned null (paper: 10%)
    decoder.text_drop_prob = 0.5  # drop the caption (paper: 50%)
    decoder.eval_limit = 64  # examples per eval split that are decoded (sampling is the costly part)
    # DDIM noise of the image manipulations decoded from an inverted latent (pipeline.py), read
    # when the run is sampled: variations need eta > 0 (sec. 3.1; 1 = DDPM-like), the paper's text
    # diffs keep the latent fixed (0).
    decoder.variation_eta = 1.0
    decoder.text_diff_eta = 0.0
    # Classifier-free guidance of the manipulations' inversion and decoding (0: sampling.guidance_scale).
    decoder.manipulation_guidance_scale = 0.0
    return {"clip": clip_section(), "decoder": decoder, "diffusion": image_diffusion.diffusion_config("eps"),
            "sampling": image_diffusion.sampling_config(num_steps=50, guidance_scale=3.0)}


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Decoder-specific checks; raises ConfigError naming the field."""
    clip_dir(config)  # names a CLIP (clip.pretrained or clip.workdir)
    if config.model.image_size != config.data.resolution:
        raise ConfigError(f"model.image_size={config.model.image_size} must equal data.resolution="
                          f"{config.data.resolution} (the decoder generates the dataset's images)")
    for field in ("clip_drop_prob", "text_drop_prob"):
        if not 0.0 <= config.decoder[field] < 1.0:
            raise ConfigError(f"decoder.{field}={config.decoder[field]}: must be in [0, 1)")
    if config.model.get("clip_embed_scale", 0.0) < 0:
        raise ConfigError(f"model.clip_embed_scale={config.model.clip_embed_scale}: must be >= 0 "
                          "(0 = sqrt of the CLIP embedding size)")
    if config.decoder.eval_limit < 1:
        raise ConfigError(f"decoder.eval_limit={config.decoder.eval_limit}: must be >= 1")
    for field in ("variation_eta", "text_diff_eta", "manipulation_guidance_scale"):
        if config.decoder[field] < 0:
            raise ConfigError(f"decoder.{field}={config.decoder[field]}: must be >= 0")
    if config.model.text.width < 0:
        raise ConfigError(f"model.text.width={config.model.text.width}: must be >= 0 (0 = no caption)")
    image_diffusion.validate_sections(config)


def unet_config(config: ml_collections.ConfigDict, clip: FrozenClip) -> ml_collections.ConfigDict:
    """`config.model` completed for `UNet.from_config` with the CLIP and tokenizer facts."""
    m = ml_collections.ConfigDict(config.model.to_dict())
    text = m.text
    del m.text
    m.text = None
    if text.width:
        m.text = dict(vocab_size=clip.tokenizer.vocab_size, context_length=clip.context_length,
                      pad_id=clip.tokenizer.pad_id, eot_id=clip.tokenizer.eot_id, **text.to_dict())
    m.clip_embed_dim = clip.embed_dim
    # Runs saved before the field existed fed the unit embedding as it is (1.0).
    m.clip_embed_scale = m.get("clip_embed_scale", 1.0) or math.sqrt(clip.embed_dim)
    m.out_channels = image_diffusion.ImageDiffusion(config.diffusion, config.sampling).out_channels
    return m


class DecoderStage(Stage):
    """Trains the decoder UNet on images and the frozen CLIP's embeddings of them."""

    def __init__(self, config: ml_collections.ConfigDict, clip: FrozenClip | None = None):
        self.config = config
        self.clip = clip or FrozenClip.of(config)
        try:
            self.model = UNet.from_config(unet_config(config, self.clip), dtype=jnp.dtype(config.dtype))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.diffusion = image_diffusion.ImageDiffusion(config.diffusion, config.sampling)
        self.uses_text = self.model.text_encoder is not None
        self.splits = EVAL_SPLITS if config.data.name == "shapes" else ("validation",)

    def init_params(self, rng: jax.Array) -> Any:
        size = self.model.image_size
        text = jnp.zeros((1, self.clip.context_length), jnp.int32) if self.uses_text else None
        return self.model.init(rng, jnp.zeros((1, size, size, 3)), jnp.zeros((1,), jnp.int32),
                               jnp.zeros((1, self.clip.embed_dim)), text)["params"]

    def frozen_params(self) -> Any:
        return self.clip.params

    def train_data(self):
        return pipeline.open_splits(self.config.data, ["train"])["train"], self._example

    def _example(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out = self.clip.example(example)
        return {"image": out["image"], "tokens": out["tokens"]}

    def apply(self, params: Any, x_t: jax.Array, t: jax.Array, clip_embed: jax.Array, tokens: jax.Array,
              use_condition: jax.Array, train: bool = False, rngs: dict | None = None) -> jax.Array:
        """The UNet's raw output; rows with `use_condition` False get the null CLIP and no caption
        (callers drop the two separately while training: see `loss`)."""
        return self.model.apply({"params": params}, x_t, t, clip_embed, tokens if self.uses_text else None,
                                drop_clip=~use_condition, drop_text=~use_condition, train=train, rngs=rngs)

    def loss(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array, frozen: Any):
        clip_embed = jax.lax.stop_gradient(self.clip.encode_images(frozen, batch["image"]))
        drop_rng, diffusion_rng, dropout_rng = jax.random.split(rng, 3)
        clip_rng, text_rng = jax.random.split(drop_rng)
        batch_size = clip_embed.shape[0]
        drop_clip = jax.random.bernoulli(clip_rng, self.config.decoder.clip_drop_prob, (batch_size,))
        drop_text = jax.random.bernoulli(text_rng, self.config.decoder.text_drop_prob, (batch_size,))
        tokens = batch["tokens"] if self.uses_text else None

        def apply(x_t, t):
            return self.model.apply({"params": params}, x_t, t, clip_embed, tokens, drop_clip=drop_clip,
                                    drop_text=drop_text, train=True, rngs={"dropout": dropout_rng})

        loss, metrics = self.diffusion.loss(apply, to_model_images(batch["image"]), diffusion_rng)
        return jnp.mean(loss), metrics

    # --- sampling -----------------------------------------------------------------------------
    def _conditioned(self, params: Any, clip_embed: jax.Array, tokens: jax.Array) -> image_diffusion.CondModelFn:
        """cond_model_fn of the samplers for these [B] conditions (a guided batch is [2B])."""
        rows = clip_embed.shape[0]

        def cond_model_fn(x_t, t, use_condition):
            repeats = x_t.shape[0] // rows
            return self.apply(params, x_t, t, jnp.tile(clip_embed, (repeats, 1)), jnp.tile(tokens, (repeats, 1)),
                              use_condition)

        return cond_model_fn

    def generate(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array,
                 sampling: ml_collections.ConfigDict | None = None) -> jax.Array:
        """Images [B, R, R, 3] in [-1, 1] for batch["image_embed"] (unit CLIP image embeddings) and
        batch["tokens"]; batch["x_T"] (optional) fixes the initial noise."""
        rows, size = batch["image_embed"].shape[0], self.model.image_size
        return self.diffusion.sample(self._conditioned(params, batch["image_embed"], batch["tokens"]),
                                     (rows, size, size, 3), rng, sampling, batch.get("x_T"))

    def invert(self, params: Any, batch: Mapping[str, jax.Array], sampling: ml_collections.ConfigDict | None = None,
               refine_steps: int = 0) -> jax.Array:
        """DDIM-inverted latents x_T of batch["image"] (uint8) under its embedding and caption: what
        `generate` with DDIM, eta = 0 and `sampling`'s steps and guidance maps back to the image."""
        cond_model_fn = self._conditioned(params, batch["image_embed"], batch["tokens"])
        return self.diffusion.invert(cond_model_fn, to_model_images(batch["image"]), sampling, refine_steps)

    def _encode(self, clip_params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        return self.clip.encode_images(clip_params, batch["image"])

    def _sample(self, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        rng = jax.random.fold_in(jax.random.key(self.config.seed), batch["index"][0])
        return self.generate(params, batch, rng)

    # --- evaluation -----------------------------------------------------------------------------
    def evaluate(self, params: Any, infer) -> dict[str, Any]:
        result: dict[str, Any] = {}
        sources = pipeline.open_splits(self.config.data, list(self.splits))
        for split in self.splits:
            data = pipeline.load_all(sources[split], self.clip.example, self.config.decoder.eval_limit)
            embeds = infer(self._encode, self.clip.params, {"image": data["image"]})
            inputs = {"image_embed": embeds, "tokens": data["tokens"],
                      "index": np.arange(len(embeds), dtype=np.int32)}
            decoded = images.to_uint8(infer(self._sample, params, inputs))
            if "combination" in data:
                result.update(shapes_attributes.score_combinations(decoded, data["combination"], split))
            shown = min(GRID_EXAMPLES, len(decoded))
            pairs = np.stack([data["image"][:shown], decoded[:shown]], axis=1).reshape(-1, *decoded.shape[1:])
            result[f"{split}_source_and_decoded"] = images.grid(pairs, columns=8)
        return result
