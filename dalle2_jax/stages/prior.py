"""The diffusion prior stage (unCLIP sec. 2.2): caption -> CLIP image embedding.

Training data are precomputed CLIP embeddings (`data/embeddings.py`), computed once from the
finished CLIP run named by `clip.workdir` or the converted pretrained CLIP named by
`clip.pretrained` (into `prior.embeddings_dir`, by default `<that directory>/embeddings`, shared
by every prior trained on that CLIP: set it per dataset when one CLIP serves several); with
`prior.embeddings = "on_the_fly"` the frozen CLIP encodes each training batch inside the train
step instead (no disk, CLIP's forward pass every step; evaluation still uses stored embeddings
of the small eval splits). The model is the
decoder-only transformer of `models/prior.py`; by default it predicts the clean embedding (the
paper's x0 objective, MSE); the text conditioning is dropped `prior.text_drop_prob` of the time
for classifier-free guidance.

Embedding scale: CLIP embeddings are unit vectors, so each of the E coordinates has a spread of
about 1/sqrt(E), far below the unit-variance noise of the diffusion. The stage multiplies
embeddings by `prior.embed_scale` (0 = sqrt(E), which gives unit variance per coordinate, the
choice of our configs; the paper multiplies ViT-H/16 embeddings by 17.2, about sqrt(1024)/2) and
divides samples by it. Samples are renormalised to unit length.

Sampling (sec. 2.2): `sampling.num_candidates` embeddings per caption (2 in the paper), keeping
the one with the larger dot product with the caption's text embedding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from dalle2_jax.data import embeddings, pipeline, shapes
from dalle2_jax.diffusion import objectives, samplers, schedules
from dalle2_jax.models.prior import DiffusionPrior
from dalle2_jax.parallel import distributed
from dalle2_jax.parallel.mesh import ConfigError
from dalle2_jax.stages import image_diffusion
from dalle2_jax.stages.base import Stage
from dalle2_jax.stages.frozen_clip import FrozenClip, clip_dir, clip_section

EVAL_SPLITS = ("validation", "heldout")
EMBEDDINGS = ("precomputed", "on_the_fly")
CLASS_EMBEDS = "class_text_embeds.npy"  # shapes: the 720 captions' CLIP text embeddings
TRAIN_MEAN = "train_image_embed_mean.npy"  # the prior-free baseline: mean train image embedding
MEAN_EXAMPLES = 10_000  # train examples the mean is taken over


def model_config() -> ml_collections.ConfigDict:
    """The `model` section of a prior config (a few-minute CPU model by default)."""
    m = ml_collections.ConfigDict()
    m.width = 128  # transformer width
    m.depth = 4  # transformer blocks
    m.num_heads = 4  # attention heads
    m.mlp_ratio = 4.0  # MLP hidden / width
    m.remat = "none"  # block rematerialisation: none | full | dots_saveable | ... (dalle2_jax.nn.remat)
    m.scan_layers = False  # scan the transformer blocks (smaller compiles of deep stacks; nn.transformer)
    return m


def stage_sections() -> dict[str, ml_collections.ConfigDict]:
    """The prior's own config sections besides `model`."""
    prior = ml_collections.ConfigDict()
    prior.embeddings = "precomputed"  # 'precomputed' (read from disk) or 'on_the_fly' (CLIP in the step)
    prior.embeddings_dir = ""  # precomputed embeddings; '' = <clip.workdir or clip.pretrained>/embeddings
    prior.text_drop_prob = 0.1  # replace the text conditioning by the learned null (paper: 10%)
    prior.embed_scale = 0.0  # multiply unit CLIP embeddings by this (0 = sqrt(embed_dim))
    prior.eval_limit = 256  # examples per eval split that are sampled (sampling is the costly part)
    return {"clip": clip_section(), "prior": prior, "diffusion": diffusion_config(), "sampling": sampling_config()}


def diffusion_config() -> ml_collections.ConfigDict:
    """Forward process and training objective."""
    d = ml_collections.ConfigDict()
    d.schedule = "cosine"  # 'cosine' or 'linear'
    d.num_timesteps = 1000  # T of the training schedule
    d.objective = "x0"  # what the model predicts: 'x0' (the paper's prior), 'eps' or 'v'
    d.loss_weighting = "uniform"  # 'uniform', 'min_snr' or 'truncated_snr' (diffusion/objectives.py)
    return d


def sampling_config() -> ml_collections.ConfigDict:
    """How samples are drawn at evaluation and generation time."""
    s = ml_collections.ConfigDict()
    s.sampler = "ddim"  # 'ddpm', 'ddim' or 'dpm_solver_pp_2m'
    s.num_steps = 64  # strided sampling steps (paper's prior: 64)
    s.eta = 0.0  # DDIM noise (0 = deterministic)
    s.guidance_scale = 1.0  # classifier-free guidance (1 = conditional model only, no extra pass)
    s.num_candidates = 2  # samples per caption; the one closest to the text embedding is kept
    return s


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Prior-specific checks; raises ConfigError naming the field."""
    clip_dir(config)  # names a CLIP (clip.pretrained or clip.workdir)
    image_diffusion.check_process(config.diffusion)
    image_diffusion.check_sampling(config.sampling, config.diffusion.num_timesteps, "sampling")
    if config.sampling.num_candidates < 1:
        raise ConfigError(f"sampling.num_candidates={config.sampling.num_candidates}: must be >= 1")
    if config.prior.embeddings not in EMBEDDINGS:
        raise ConfigError(f"prior.embeddings={config.prior.embeddings!r}: expected one of {EMBEDDINGS}")
    if not 0.0 <= config.prior.text_drop_prob < 1.0:
        raise ConfigError(f"prior.text_drop_prob={config.prior.text_drop_prob}: must be in [0, 1)")


def sample_embeddings(model: DiffusionPrior, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array,
                      schedule: schedules.Schedule, sampling: ml_collections.ConfigDict, objective: str,
                      scale: float, x_T: jax.Array | None = None) -> jax.Array:
    """Unit-norm image embeddings [B, E] for the text conditioning in `batch` (sec. 2.2); `x_T`
    ([B * num_candidates, E], candidates of a row adjacent) fixes the initial noise."""
    n = sampling.num_candidates
    text = {k: jnp.repeat(batch[k], n, axis=0) for k in ("text_embed", "text_encodings", "text_mask")}
    rows = text["text_embed"].shape[0]

    def cond_model_fn(x_t, t, use_condition):
        repeats = x_t.shape[0] // rows
        tiled = {k: jnp.concatenate([v] * repeats) for k, v in text.items()}
        return model.apply({"params": params}, x_t, t, tiled["text_embed"] * scale, tiled["text_encodings"],
                           tiled["text_mask"], ~use_condition)

    if sampling.guidance_scale == 1.0:
        def model_fn(x_t, t):
            return cond_model_fn(x_t, t, jnp.ones((x_t.shape[0],), bool))
    else:
        model_fn = samplers.classifier_free_guidance(cond_model_fn, sampling.guidance_scale)
    shape = (rows, text["text_embed"].shape[-1])
    if sampling.sampler == "ddpm":
        x = samplers.ddpm_sample(model_fn, schedule, shape, rng, objective, x_T=x_T)
    elif sampling.sampler == "ddim":
        x = samplers.ddim_sample(model_fn, schedule, shape, rng, objective, eta=sampling.eta, x_T=x_T)
    else:
        x = samplers.dpm_solver_pp_2m_sample(model_fn, schedule, shape, rng, objective, x_T=x_T)
    x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    candidates = x.reshape(-1, n, x.shape[-1])
    score = jnp.einsum("bne,be->bn", candidates, batch["text_embed"])
    return jnp.take_along_axis(candidates, jnp.argmax(score, axis=1)[:, None, None], axis=1)[:, 0]


class PriorStage(Stage):
    """Trains the diffusion prior on a frozen CLIP's embeddings; evaluates sampled embeddings."""

    def __init__(self, config: ml_collections.ConfigDict, clip: FrozenClip | None = None):
        self.config = config
        self.clip = clip or FrozenClip.of(config)
        self.embeddings_dir = config.prior.embeddings_dir or f"{clip_dir(config)[0]}/embeddings"
        model_cfg = ml_collections.ConfigDict(config.model.to_dict())
        model_cfg.embed_dim = self.clip.embed_dim
        model_cfg.text_width = self.clip.text_width
        model_cfg.max_text_length = self.clip.context_length
        self.model = DiffusionPrior.from_config(model_cfg, dtype=jnp.dtype(config.dtype))
        self.scale = config.prior.embed_scale or math.sqrt(self.clip.embed_dim)
        diffusion = config.diffusion
        self.schedule = schedules.make_schedule(diffusion.schedule, diffusion.num_timesteps)
        self.sampling_schedule = schedules.respace(self.schedule, config.sampling.num_steps)
        self.loss_weights = (None if diffusion.loss_weighting == "uniform" else
                             objectives.loss_weights(diffusion.loss_weighting, diffusion.objective, self.schedule))
        self.splits = ("train", *EVAL_SPLITS) if config.data.name == "shapes" else ("train", "validation")
        self.on_the_fly = config.prior.embeddings == "on_the_fly"

    # --- embeddings ---------------------------------------------------------------------------
    def prepare(self, infer) -> None:
        """Stores what is not on disk yet: the CLIP embeddings of every split (of the eval splits
        only, on the fly), the mean train image embedding and the class captions' embeddings."""
        needed = self.splits[1:] if self.on_the_fly else self.splits
        for split in [s for s in needed if not embeddings.is_complete(self.embeddings_dir, s)]:
            logging.info("Computing CLIP embeddings of the %s split into %s.", split, self.embeddings_dir)
            data, out = self._encode_split(infer, split)
            if "combination" in data:
                out["combination"] = data["combination"]
            if distributed.is_chief():
                embeddings.write_split(self.embeddings_dir, split, out, self.clip.tokenizer.decode(data["tokens"]))
        if not epath.Path(f"{self.embeddings_dir}/{TRAIN_MEAN}").exists():
            if embeddings.is_complete(self.embeddings_dir, "train"):
                image_embeds = embeddings.EmbeddingSource(self.embeddings_dir, "train").all(MEAN_EXAMPLES)
            else:
                image_embeds = self._encode_split(infer, "train", limit=MEAN_EXAMPLES)[1]
            mean = np.mean(image_embeds["image_embed"], axis=0)
            self._save(TRAIN_MEAN, mean / np.linalg.norm(mean))
        if self.config.data.name == "shapes" and not epath.Path(f"{self.embeddings_dir}/{CLASS_EMBEDS}").exists():
            tokens = self.clip.tokenizer.encode(shapes.all_captions())
            self._save(CLASS_EMBEDS, infer(self.clip.encode_texts, self.clip.params, {"tokens": tokens})["text_embed"])

    def _encode_split(self, infer, split: str, limit: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """A split's CLIP inputs and what CLIP makes of them."""
        data = pipeline.load_all(pipeline.open_splits(self.config.data, [split])[split], self.clip.example, limit)
        return data, infer(self.clip.encode, self.clip.params, {"image": data["image"], "tokens": data["tokens"]})

    def _save(self, name: str, array: np.ndarray) -> None:
        if distributed.is_chief():
            with epath.Path(f"{self.embeddings_dir}/{name}").open("wb") as f:
                np.save(f, array)

    # --- training -------------------------------------------------------------------------------
    def init_params(self, rng: jax.Array) -> Any:
        e, length, width = self.clip.embed_dim, self.clip.context_length, self.clip.text_width
        return self.model.init(rng, jnp.zeros((1, e)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, e)),
                               jnp.zeros((1, length, width)), jnp.ones((1, length), bool),
                               jnp.zeros((1,), bool))["params"]

    def frozen_params(self) -> Any:
        return self.clip.params if self.on_the_fly else None

    def train_data(self):
        if self.on_the_fly:
            return pipeline.open_splits(self.config.data, ["train"])["train"], self._clip_inputs
        return embeddings.EmbeddingSource(self.embeddings_dir, "train"), _training_fields

    def _clip_inputs(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out = self.clip.example(example)
        return {"image": out["image"], "tokens": out["tokens"]}

    def loss(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array, frozen: Any):
        if self.on_the_fly:
            batch = jax.lax.stop_gradient(self.clip.encode(frozen, batch))
        t_rng, noise_rng, drop_rng = jax.random.split(rng, 3)
        x0 = batch["image_embed"] * self.scale
        batch_size = x0.shape[0]
        t = jax.random.randint(t_rng, (batch_size,), 0, self.schedule.num_timesteps)
        noise = jax.random.normal(noise_rng, x0.shape)
        x_t = objectives.q_sample(self.schedule, x0, t, noise)
        drop = jax.random.bernoulli(drop_rng, self.config.prior.text_drop_prob, (batch_size,))
        prediction = self.model.apply({"params": params}, x_t, t, batch["text_embed"] * self.scale,
                                      batch["text_encodings"], batch["text_mask"], drop)
        loss = objectives.diffusion_loss(self.config.diffusion.objective, prediction, x0, noise, t,
                                         self.schedule, self.loss_weights)
        x0_hat = objectives.to_x0_and_eps(self.config.diffusion.objective, prediction, x_t, t, self.schedule)[0]
        cosine = jnp.sum(x0_hat * x0, -1) / (jnp.linalg.norm(x0_hat, axis=-1) * jnp.linalg.norm(x0, axis=-1) + 1e-6)
        return jnp.mean(loss), {"x0_cosine": jnp.mean(cosine)}

    # --- evaluation -----------------------------------------------------------------------------
    def _sample(self, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        rng = jax.random.fold_in(jax.random.key(self.config.seed), batch["index"][0])
        return sample_embeddings(self.model, params, batch, rng, self.sampling_schedule, self.config.sampling,
                                 self.config.diffusion.objective, self.scale)

    def evaluate(self, params: Any, infer) -> dict[str, float]:
        train_mean = np.load(f"{self.embeddings_dir}/{TRAIN_MEAN}")
        class_embeds = (np.load(f"{self.embeddings_dir}/{CLASS_EMBEDS}") if self.config.data.name == "shapes"
                        else None)
        metrics = {}
        for split in self.splits[1:]:
            data = embeddings.EmbeddingSource(self.embeddings_dir, split).all(limit=self.config.prior.eval_limit)
            data["index"] = np.arange(len(data["image_embed"]), dtype=np.int32)
            inputs = {k: data[k] for k in ("text_embed", "text_encodings", "text_mask", "index")}
            sampled = infer(self._sample, params, inputs)
            truth = data["image_embed"]
            metrics[f"{split}/cosine_prior"] = float(np.mean(np.sum(sampled * truth, -1)))
            metrics[f"{split}/cosine_text_baseline"] = float(np.mean(np.sum(data["text_embed"] * truth, -1)))
            metrics[f"{split}/cosine_mean_baseline"] = float(np.mean(truth @ train_mean))
            if "combination" in data:
                metrics[f"{split}/cosine_same_caption_reference"] = _same_caption_cosine(truth, data["combination"])
            if class_embeds is not None:
                for name, embeds in (("prior", sampled), ("true_image", truth)):
                    top1 = np.argmax(embeds @ class_embeds.T, axis=1) == data["combination"]
                    metrics[f"{split}/zero_shot_top1_{name}"] = float(np.mean(top1))
        return metrics


def _same_caption_cosine(image_embeds: np.ndarray, labels: np.ndarray) -> float:
    """Mean cosine between two different images of the same caption: what a prior that samples
    the true conditional distribution would score on `cosine_prior` (a reference, not a bound)."""
    per_caption = []
    for label in np.unique(labels):
        group = image_embeds[labels == label]
        if len(group) > 1:
            gram = group @ group.T
            per_caption.append((gram.sum() - np.trace(gram)) / (len(group) * (len(group) - 1)))
    return float(np.mean(per_caption)) if per_caption else float("nan")


def _training_fields(example: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: example[k] for k in ("text_embed", "text_encodings", "text_mask", "image_embed")}
