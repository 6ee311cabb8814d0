"""The CLIP stage (unCLIP sec. 2; CLIP, Radford et al. 2021, sec. 2.5): contrastive pretraining.

Loss: the symmetric cross-entropy over the cosine-similarity logits of the *global* batch (every
image against every caption of the batch, on all devices), scaled by the learned temperature.
Evaluation: zero-shot classification of each image among all captions of the shapes dataset
(top-1/top-5), per-attribute accuracy of that prediction, and text-to-image retrieval recall.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dalle2_jax.data import pipeline, shapes
from dalle2_jax.data.tokenizer import make_tokenizer
from dalle2_jax.evaluation import retrieval
from dalle2_jax.models.clip import CLIP
from dalle2_jax.parallel.mesh import ConfigError
from dalle2_jax.stages.base import Stage

EVAL_SPLITS = ("validation", "heldout")


def model_config() -> ml_collections.ConfigDict:
    """The `model` section of a CLIP config (sizes of a few-minute CPU model by default)."""
    m = ml_collections.ConfigDict()
    m.embed_dim = 128  # shared image/text embedding size
    m.remat = "none"  # block rematerialisation: none | full | dots_saveable | ... (dalle2_jax.nn.remat)
    m.scan_layers = False  # scan the transformer blocks (smaller compiles of deep stacks; nn.transformer)
    m.activation = "gelu"  # MLP activation: 'gelu' or 'quick_gelu' (OpenAI's CLIPs)
    m.vision = ml_collections.ConfigDict()
    m.vision.patch_size = 4  # ViT patch side; data.resolution must be a multiple
    m.vision.width = 128  # ViT width
    m.vision.depth = 4  # ViT blocks
    m.vision.num_heads = 4  # ViT attention heads
    m.vision.mlp_ratio = 4.0  # ViT MLP hidden / width
    m.vision.image_mean = ()  # per-channel mean of [0, 1] pixels, subtracted ((): pixels mapped to [-1, 1])
    m.vision.image_std = ()  # per-channel std of [0, 1] pixels, divided by ((): pixels mapped to [-1, 1])
    m.text = ml_collections.ConfigDict()
    m.text.width = 128  # text transformer width
    m.text.depth = 4  # text transformer blocks
    m.text.num_heads = 4  # text attention heads
    m.text.mlp_ratio = 4.0  # text MLP hidden / width
    return m


def validate_config(config: ml_collections.ConfigDict) -> None:
    """CLIP-specific checks; raises ConfigError naming the field."""
    patch = config.model.vision.patch_size
    vision = config.model.vision
    if len(vision.image_mean) not in (0, 3) or len(vision.image_std) != len(vision.image_mean):
        raise ConfigError(f"model.vision.image_mean={vision.image_mean} and image_std={vision.image_std}: "
                          "give both, three values each, or neither")
    if config.data.resolution % patch:
        raise ConfigError(
            f"model.vision.patch_size={patch} does not divide the image size data.resolution={config.data.resolution}")
    try:  # the model checks its towers (heads divide widths, EOT inside the vocabulary)
        CLIP.from_config(resolved_model_config(config, make_tokenizer(config.tokenizer)))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def resolved_model_config(config: ml_collections.ConfigDict, tokenizer: Any) -> ml_collections.ConfigDict:
    """`config.model` completed with what other sections fix: image size and tokenizer facts."""
    m = ml_collections.ConfigDict(config.model.to_dict())
    m.vision.image_size = config.data.resolution
    m.text.context_length = tokenizer.context_length
    m.text.vocab_size = tokenizer.vocab_size
    m.text.eot_token_id = tokenizer.eot_id
    return m


def clip_example(tokenizer: Any, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One dataset example as CLIP inputs: uint8 image, caption tokens (and shapes' combination)."""
    caption = example["caption"]
    caption = caption.decode() if isinstance(caption, bytes) else str(caption)
    out = {"image": np.asarray(example["image"], np.uint8), "tokens": tokenizer.encode([caption])[0]}
    if "combination" in example:
        out["combination"] = np.asarray(example["combination"], np.int32)
    return out


def to_model_images(images: jax.Array, mean: Sequence[float] = (), std: Sequence[float] = ()) -> jax.Array:
    """uint8 [0, 255] -> float32: [-1, 1], or `(x / 255 - mean) / std` per channel when given
    (`model.vision.image_mean` / `image_std`: imported CLIPs use OpenAI's statistics)."""
    if not mean:
        return images.astype(jnp.float32) / 127.5 - 1.0
    return (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def contrastive_loss(image_embed: jax.Array, text_embed: jax.Array,
                     logit_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Symmetric InfoNCE over the batch; returns (loss, image->text top-1 accuracy)."""
    logits = logit_scale * image_embed @ text_embed.T
    labels = jnp.arange(logits.shape[0])
    loss_images = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss_texts = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, axis=1) == labels)
    return (loss_images + loss_texts) / 2, accuracy


class ClipStage(Stage):
    """Trains CLIP on image-caption pairs; evaluates zero-shot on the shapes captions."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.tokenizer = make_tokenizer(config.tokenizer)
        self.model = CLIP.from_config(resolved_model_config(config, self.tokenizer),
                                      dtype=jnp.dtype(config.dtype))
        splits = ("train", *EVAL_SPLITS) if config.data.name == "shapes" else ("train", "validation")
        self._sources = pipeline.open_splits(config.data, splits)
        self._eval_data: dict[str, dict[str, np.ndarray]] = {}

    def _pixels(self, images: jax.Array) -> jax.Array:
        vision = self.config.model.vision
        return to_model_images(images, vision.image_mean, vision.image_std)

    # --- training ---------------------------------------------------------------------------
    def init_params(self, rng: jax.Array) -> Any:
        size = self.config.data.resolution
        images = jnp.zeros((1, size, size, 3), jnp.float32)
        tokens = jnp.zeros((1, self.tokenizer.context_length), jnp.int32)
        return self.model.init(rng, images, tokens)["params"]

    def _example(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return clip_example(self.tokenizer, example)

    def train_data(self):
        return self._sources["train"], self._train_example

    def _train_example(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out = self._example(example)
        out.pop("combination", None)
        return out

    def loss(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array, frozen: Any):
        del rng, frozen  # CLIP training is deterministic given the batch and freezes nothing
        out = self.model.apply({"params": params}, self._pixels(batch["image"]), batch["tokens"])
        loss, accuracy = contrastive_loss(out["image_embed"], out["text_embed"], out["logit_scale"])
        return loss, {"batch_accuracy": accuracy, "logit_scale": out["logit_scale"]}

    # --- evaluation -------------------------------------------------------------------------
    def _encode_images(self, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        out = self.model.apply({"params": params}, self._pixels(batch["image"]), method=CLIP.encode_image)
        return out / jnp.linalg.norm(out, axis=-1, keepdims=True)

    def _encode_texts(self, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        out = self.model.apply({"params": params}, batch["tokens"], method=CLIP.encode_text)[0]
        return out / jnp.linalg.norm(out, axis=-1, keepdims=True)

    def eval_data(self, split: str) -> dict[str, np.ndarray]:
        if split not in self._eval_data:
            self._eval_data[split] = pipeline.load_all(self._sources[split], self._example,
                                                       limit=self.config.data.eval_limit)
        return self._eval_data[split]

    def evaluate(self, params: Any, infer) -> dict[str, float]:
        if self.config.data.name != "shapes":
            data = self.eval_data("validation")
            images = infer(self._encode_images, params, {"image": data["image"]})
            texts = infer(self._encode_texts, params, {"tokens": data["tokens"]})
            recall = retrieval.text_to_image_recall(images, texts, np.arange(len(images)))
            return {f"validation/{k}": v for k, v in recall.items()}

        combinations = shapes.all_combinations()
        class_tokens = self.tokenizer.encode(shapes.all_captions())
        class_embeds = infer(self._encode_texts, params, {"tokens": class_tokens})
        metrics = {}
        for split in EVAL_SPLITS:
            data = self.eval_data(split)
            labels = data["combination"]
            image_embeds = infer(self._encode_images, params, {"image": data["image"]})
            for k, v in retrieval.zero_shot_accuracy(image_embeds, class_embeds, labels).items():
                metrics[f"{split}/zero_shot_{k}"] = v
            for k, v in retrieval.text_to_image_recall(image_embeds, class_embeds, labels).items():
                metrics[f"{split}/retrieval_{k}"] = v
            predicted = np.argmax(image_embeds @ class_embeds.T, axis=1)
            for attribute in shapes.ATTRIBUTE_NAMES:
                hits = [combinations[p][attribute] == combinations[t][attribute]
                        for p, t in zip(predicted, labels)]
                metrics[f"{split}/zero_shot_{attribute}_accuracy"] = float(np.mean(hits))
        return metrics
