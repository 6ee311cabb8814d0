"""The unCLIP generation pipeline (Ramesh et al. 2022, sec. 2 and 3): finished stages, loaded for sampling.

Text to image (sec. 2): caption -> CLIP text embedding and token encodings -> prior (best of
`num_candidates`) -> decoder (classifier-free guidance) -> upsamplers, all in one jitted program
per batch, the batch sharded over every device (a data-parallel mesh).

Image manipulations (sec. 3), on the decoder's bipartite latent (CLIP image embedding z_i, DDIM
latent x_T):
  - variations (sec. 3.1): decode the image's z_i with DDIM eta > 0 from its DDIM-inverted x_T
    (the paper's), or from fresh noise;
  - interpolations (sec. 3.2): slerp(z_a, z_b, theta), with x_T fixed for every theta or slerped
    between the two images' inverted latents (then theta = 0 and 1 reconstruct the sources);
  - text diffs (sec. 3.3): z_d = normalize(z_t - z_t0) for the current caption t0 and the target
    t; decode slerp(z_i, z_d, theta) from the image's inverted latent.
The manipulations give the decoder no caption (its text is dropped, as in part of its training);
text diffs can also give it the captions (`with_captions`, our extension). They decode with DDIM
at the run's step count and `decoder.manipulation_guidance_scale` (by default the guidance of
text to image), variations and text diffs at the DDIM noise of the run's `decoder.variation_eta`
and `decoder.text_diff_eta` (interpolations at 0, so that their endpoints reproduce the sources),
and invert with that same guided step and x0 clipping, with
`INVERT_REFINE_STEPS` fixed-point refinements per step: the first-order inversion of an x0- or
v-predicting decoder is ill-conditioned at the nearly clean levels (eps = (x_t - a x0_hat) / s with
s ~ 0.006 at t = 0), and its round trips lost the shape; the refined inverse round-trips (16
shapes images, all five attributes kept: 25% plain, 88% with 1 refinement, 100% with 3). On flat
synthetic images the exact inverse is far from Gaussian (std ~50, not 1): there is no noise in
them for the latent to encode, so it encodes the image itself.

Reproducibility: every image has a seed; its initial noise of every stage is drawn from that
seed alone, so with the deterministic samplers (DDIM eta = 0, DPM-Solver++; the defaults) an
image is reproduced by (prompt, seed) whatever else is in its batch. Samplers that add noise at
each step draw it per batch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from dalle2_jax import config_schema, images
from dalle2_jax.diffusion import schedules
from dalle2_jax.multistage import STAGE as MULTISTAGE
from dalle2_jax.parallel import mesh as mesh_lib
from dalle2_jax.parallel import sharding
from dalle2_jax.parallel.mesh import ConfigError
from dalle2_jax.stages import image_diffusion
from dalle2_jax.stages.decoder import DecoderStage
from dalle2_jax.stages.decoder import stage_sections as decoder_sections
from dalle2_jax.stages.finished_run import load_finished_run
from dalle2_jax.stages.frozen_clip import FrozenClip
from dalle2_jax.stages.prior import PriorStage, sample_embeddings
from dalle2_jax.stages.upsampler import UpsamplerStage
from dalle2_jax.training.loop import Inference

GENERATIVE_STAGES = ("prior", "decoder", "upsampler")
INVERT_REFINE_STEPS = 3  # fixed-point refinements per DDIM inversion step (samplers.ddim_invert)


def slerp(a: jax.Array, b: jax.Array, theta: jax.Array) -> jax.Array:
    """Spherical interpolation between a and b ([..., D]) at theta ([...]); linear when nearly parallel."""
    a_unit = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    b_unit = b / jnp.linalg.norm(b, axis=-1, keepdims=True)
    omega = jnp.arccos(jnp.clip(jnp.sum(a_unit * b_unit, -1, keepdims=True), -1.0, 1.0))
    theta = jnp.asarray(theta, jnp.float32)[..., None]
    small = omega < 1e-4
    sin = jnp.where(small, 1.0, jnp.sin(omega))
    wa = jnp.where(small, 1.0 - theta, jnp.sin((1.0 - theta) * omega) / sin)
    wb = jnp.where(small, theta, jnp.sin(theta * omega) / sin)
    return wa * a + wb * b


def _normalize(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _row_noise(seeds: jax.Array, salt: int, shape: tuple[int, ...]) -> jax.Array:
    """N(0, I) [B, *shape], row b drawn from (seeds[b], salt) only."""
    return jax.vmap(lambda s: jax.random.normal(jax.random.fold_in(jax.random.key(s), salt), shape))(seeds)


def _batch_rng(seeds: jax.Array, salt: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seeds[0]), salt)


def stage_dirs(workdir: str) -> dict[str, str]:
    """Stage name -> directory of a main-job run (WORKDIR/config.json lists the stages in order)."""
    root = epath.Path(workdir)
    path = root / "config.json"
    if not path.exists():
        raise ConfigError(f"--workdir={workdir!r}: no config.json; expected the directory of a finished "
                          "main-job run (python -m dalle2_jax.train --config=configs/shapes/unclip.py)")
    config = json.loads(path.read_text())
    if config.get("stage") != MULTISTAGE:
        raise ConfigError(f"--workdir={workdir!r} is a single {config.get('stage')!r} run; the sampler needs a "
                          "multi-stage run with clip, prior and decoder stages")
    return {name: str(root / name) for name in config["stages"]}


class Pipeline:
    """CLIP, prior, decoder and upsamplers of a finished multi-stage run, ready to sample.

    `sampling` overrides stage sampling fields: {"decoder": {"num_steps": 25}, ...}; stage names
    are those of the run ("prior", "decoder", "upsampler", ...). `manipulation_guidance_scale`
    overrides the run's `decoder.manipulation_guidance_scale`.
    """

    def __init__(self, workdir: str, sampling: Mapping[str, Mapping[str, Any]] | None = None,
                 batch_size: int = 0, manipulation_guidance_scale: float | None = None):
        dirs = stage_dirs(workdir)
        kinds = {name: json.loads((epath.Path(d) / "config.json").read_text())["stage"]
                 for name, d in dirs.items() if (epath.Path(d) / "config.json").exists()}
        for needed in ("clip", "prior", "decoder"):
            if needed not in kinds.values():
                raise ConfigError(f"--workdir={workdir!r}: the run has no finished {needed} stage "
                                  f"(stages: {sorted(dirs)})")
        clip_name = next(n for n, k in kinds.items() if k == "clip")
        self.clip = FrozenClip.load(dirs[clip_name], field=f"--workdir ({clip_name})")
        self.params: dict[str, Any] = {}
        self.stages: dict[str, Any] = {}
        self.upsampler_names: list[str] = []
        for name, kind in kinds.items():
            if kind not in GENERATIVE_STAGES:
                continue
            config, params = load_finished_run(dirs[name], f"--workdir ({name})", kind)
            if kind == "prior":
                stage = PriorStage(config, clip=self.clip)
            elif kind == "decoder":
                stage = DecoderStage(config, clip=self.clip)
            else:
                stage = UpsamplerStage(config)
                self.upsampler_names.append(name)
            self.stages[name], self.params[name] = stage, params
        self.prior_name = next(n for n in self.stages if kinds[n] == "prior")
        self.decoder_name = next(n for n in self.stages if kinds[n] == "decoder")
        self.sampling = self._sampling(sampling or {})
        # The manipulations' DDIM noise; runs trained before these fields existed read as the defaults.
        section, defaults = self.stages[self.decoder_name].config.decoder, decoder_sections()["decoder"]
        self.variation_eta = float(section.get("variation_eta", defaults.variation_eta))
        self.text_diff_eta = float(section.get("text_diff_eta", defaults.text_diff_eta))
        if manipulation_guidance_scale is None:
            manipulation_guidance_scale = section.get("manipulation_guidance_scale",
                                                      defaults.manipulation_guidance_scale)
        if manipulation_guidance_scale < 0:
            raise ConfigError(f"manipulation_guidance_scale={manipulation_guidance_scale}: must be >= 0 "
                              "(0 = the decoder's sampling.guidance_scale)")
        self.manipulation_guidance_scale = float(manipulation_guidance_scale
                                                 or self.sampling[self.decoder_name].guidance_scale)

        devices = jax.devices()
        mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}), devices)
        batch_size = batch_size or 2 * len(devices)
        if batch_size % len(devices):
            raise ConfigError(f"--batch_size={batch_size}: must be a multiple of the {len(devices)} devices")
        self.batch_size = batch_size
        replicated = NamedSharding(mesh, PartitionSpec())
        self.params = jax.device_put(self.params, replicated)
        self.clip_params = jax.device_put(self.clip.params, replicated)
        rules = sharding.rules_from_config(config_schema.DEFAULT_RULES)
        self._infer = Inference(sharding.batch_sharding(mesh, rules), batch_size)
        self._programs: dict[float, Any] = {}

    def _sampling(self, overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, ml_collections.ConfigDict]:
        out = {name: ml_collections.ConfigDict(stage.config.sampling.to_dict()) for name, stage in self.stages.items()}
        for name, fields in overrides.items():
            if name not in out:
                raise ConfigError(f"sampling override for unknown stage {name!r}: the run's generative stages "
                                  f"are {sorted(out)}")
            for field, value in fields.items():
                if field not in out[name]:
                    raise ConfigError(f"{name}.{field}: not a sampling field ({sorted(out[name])})")
                try:
                    out[name][field] = type(out[name][field])(value)
                except (TypeError, ValueError):
                    raise ConfigError(f"{name}.{field}={value!r}: expected a {type(out[name][field]).__name__}") \
                        from None
            stage = self.stages[name]
            image_diffusion.check_sampling(out[name], stage.config.diffusion.num_timesteps, name)
            if name in self.upsampler_names and out[name].guidance_scale != 1.0:
                raise ConfigError(f"{name}.guidance_scale={out[name].guidance_scale}: upsamplers are not guided")
            if name == self.prior_name and out[name].num_candidates < 1:
                raise ConfigError(f"{name}.num_candidates={out[name].num_candidates}: must be >= 1")
        return out

    # --- inputs ---------------------------------------------------------------------------------
    def tokens(self, prompts: Sequence[str]) -> np.ndarray:
        """Token rows of the prompts; an empty prompt is an error, an over-long one is truncated."""
        for k, prompt in enumerate(prompts):
            if not prompt.strip():
                raise ValueError(f"prompt {k} is empty")
        tokenizer = self.clip.tokenizer
        for prompt, cut in zip(prompts, tokenizer.truncated(list(prompts))):
            if cut:
                logging.warning("Prompt truncated to CLIP's %d tokens: %r", tokenizer.context_length, prompt)
        return tokenizer.encode(list(prompts))

    def input_image(self, picture: np.ndarray) -> np.ndarray:
        """A square uint8 [R, R, 3] source image at CLIP's resolution (what the manipulations take)."""
        return self.input_images(np.asarray(picture)[None])[0]

    def input_images(self, pictures: np.ndarray) -> np.ndarray:
        """`input_image` of each of uint8 [N, R', R', 3]."""
        return self._images_at(pictures, int(self.clip.config.data.resolution))

    def _images_at(self, pictures: np.ndarray, size: int) -> np.ndarray:
        """uint8 [N, R, R, 3] resized to `size` (antialiased), as uint8."""
        pictures = np.asarray(pictures)
        if pictures.ndim != 4 or pictures.shape[-1] != 3 or pictures.shape[1] != pictures.shape[2]:
            raise ValueError(f"images must be square RGB [N, R, R, 3], got {pictures.shape}")
        if pictures.shape[1] == size:
            return pictures.astype(np.uint8)
        x = jax.image.resize(jnp.asarray(pictures, jnp.float32), (len(pictures), size, size, 3), "linear",
                             antialias=True)
        return np.clip(np.round(np.asarray(x)), 0, 255).astype(np.uint8)

    # --- the compiled programs ------------------------------------------------------------------
    def _upsample(self, params: Any, x: jax.Array, seeds: jax.Array) -> jax.Array:
        for k, name in enumerate(self.upsampler_names):
            stage = self.stages[name]
            size = stage.model.image_size
            x_T = _row_noise(seeds, 10 + k, (size, size, 3))
            x = stage.generate(params[name], {"low_res": x, "x_T": x_T}, _batch_rng(seeds, 10 + k),
                               self.sampling[name])
        return x

    def _decode(self, params: Any, image_embed: jax.Array, tokens: jax.Array, seeds: jax.Array,
                x_T: jax.Array | None, sampling: ml_collections.ConfigDict | None = None) -> jax.Array:
        decoder = self.stages[self.decoder_name]
        size = decoder.model.image_size
        if x_T is None:
            x_T = _row_noise(seeds, 2, (size, size, 3))
        x = decoder.generate(params[self.decoder_name], {"image_embed": image_embed, "tokens": tokens, "x_T": x_T},
                             _batch_rng(seeds, 2), sampling or self.sampling[self.decoder_name])
        return self._upsample(params, x, seeds)

    def _text_to_image(self, params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        clip_params, params = params
        seeds = batch["seed"]
        text = self.clip.encode_texts(clip_params, batch)
        prior = self.stages[self.prior_name]
        sampling = self.sampling[self.prior_name]
        prior_noise = _row_noise(seeds, 1, (sampling.num_candidates, self.clip.embed_dim))
        image_embed = sample_embeddings(prior.model, params[self.prior_name], text, _batch_rng(seeds, 1),
                                        schedules.respace(prior.schedule, sampling.num_steps), sampling,
                                        prior.config.diffusion.objective, prior.scale,
                                        x_T=prior_noise.reshape(-1, self.clip.embed_dim))
        out = self._decode(params, image_embed, batch["tokens"], seeds, None)
        return {"image": out, "image_embed": image_embed}

    def _embed_images(self, clip_params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        return self.clip.encode_images(clip_params, batch["image"])

    def _manipulation_sampling(self, eta: float) -> ml_collections.ConfigDict:
        """The decoder's sampling for the manipulations: DDIM at noise `eta` (the sampler that DDIM
        inversion inverts) with the run's step count and the manipulations' guidance."""
        sampling = ml_collections.ConfigDict(self.sampling[self.decoder_name].to_dict())
        sampling.sampler, sampling.eta = "ddim", float(eta)
        sampling.guidance_scale = self.manipulation_guidance_scale
        return sampling

    def _invert(self, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        decoder = self.stages[self.decoder_name]
        return decoder.invert(params[self.decoder_name], batch, self._manipulation_sampling(0.0), INVERT_REFINE_STEPS)

    def _decoder_program(self, eta: float):
        """The jitted-once program decoding batch{image_embed, tokens, seed[, x_T]}, with the
        decoder's sampling at DDIM noise `eta` (the manipulations' setting)."""
        if eta not in self._programs:
            sampling = self._manipulation_sampling(eta)

            def program(params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
                return self._decode(params, batch["image_embed"], batch["tokens"], batch["seed"], batch.get("x_T"),
                                    sampling)

            self._programs[eta] = program
        return self._programs[eta]

    # --- public API -----------------------------------------------------------------------------
    def text_to_image(self, prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
        """uint8 images [len(prompts), R, R, 3], image k from prompts[k] and seeds[k]."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        batch = {"tokens": self.tokens(prompts), "seed": np.asarray(seeds, np.int32)}
        return images.to_uint8(self._infer(self._text_to_image, (self.clip_params, self.params), batch)["image"])

    def _manipulate(self, embeds: np.ndarray, seeds: Sequence[int], x_T: np.ndarray | None, eta: float,
                    tokens: np.ndarray | None = None) -> np.ndarray:
        batch = {"image_embed": np.asarray(embeds, np.float32), "seed": np.asarray(seeds, np.int32),
                 "tokens": self._caption_tokens(len(seeds), tokens)}
        if x_T is not None:
            batch["x_T"] = np.asarray(x_T, np.float32)
        return images.to_uint8(self._infer(self._decoder_program(eta), self.params, batch))

    def _caption_tokens(self, n: int, tokens: np.ndarray | None) -> np.ndarray:
        """The given caption tokens, or n empty captions (all padding: the caption dropped)."""
        return np.zeros((n, self.clip.context_length), np.int32) if tokens is None else tokens

    def image_embeddings(self, pictures: np.ndarray) -> np.ndarray:
        """Unit CLIP image embeddings of uint8 [N, R, R, 3] images."""
        return self._infer(self._embed_images, self.clip_params, {"image": np.asarray(pictures, np.uint8)})

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        return self._infer(self._encode_texts, self.clip_params, {"tokens": self.tokens(texts)})

    def _encode_texts(self, clip_params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        return self.clip.encode_texts(clip_params, batch)["text_embed"]

    def invert(self, pictures: np.ndarray, embeds: np.ndarray, tokens: np.ndarray | None = None) -> np.ndarray:
        """DDIM latents x_T of the images (resized to the decoder's size) under their embeddings
        (and caption tokens; none by default): what the manipulations' decoding maps back to them."""
        size = self.stages[self.decoder_name].model.image_size
        batch = {"image": self._images_at(pictures, size), "image_embed": np.asarray(embeds, np.float32),
                 "tokens": self._caption_tokens(len(pictures), tokens)}
        return self._infer(self._invert, self.params, batch)

    def variations(self, picture: np.ndarray, seeds: Sequence[int], eta: float | None = None,
                   from_inverted: bool = True) -> np.ndarray:
        """len(seeds) variations of one uint8 [R, R, 3] image (sec. 3.1): its embedding decoded with
        DDIM noise `eta` (default: the run's `decoder.variation_eta`) from its DDIM-inverted latent
        (the paper's), or from fresh noise."""
        embed = self.image_embeddings(picture[None])
        x_T = None
        if from_inverted:
            x_T = np.repeat(self.invert(picture[None], embed), len(seeds), axis=0)
        return self._manipulate(np.repeat(embed, len(seeds), axis=0), seeds, x_T,
                                self.variation_eta if eta is None else eta)

    def interpolate(self, picture_a: np.ndarray, picture_b: np.ndarray, thetas: Sequence[float], seed: int,
                    latent: str = "inverted") -> np.ndarray:
        """Images along slerp(z_a, z_b, theta) (sec. 3.2); latent 'fixed' (one x_T from `seed`) or
        'inverted' (x_T slerped between the images' DDIM-inverted latents)."""
        if latent not in ("fixed", "inverted"):
            raise ValueError(f"latent={latent!r}: expected 'fixed' or 'inverted'")
        pair = np.stack([picture_a, picture_b])
        z = self.image_embeddings(pair)
        thetas = np.asarray(thetas, np.float32)
        embeds = np.asarray(slerp(z[0][None], z[1][None], thetas))
        x_T = None
        if latent == "inverted":
            inverted = self.invert(pair, z).reshape(2, -1)
            x_T = np.asarray(slerp(inverted[0][None], inverted[1][None], thetas)).reshape(
                len(thetas), *self.invert_shape)
        return self._manipulate(embeds, [seed] * len(thetas), x_T, eta=0.0)

    @property
    def invert_shape(self) -> tuple[int, int, int]:
        size = self.stages[self.decoder_name].model.image_size
        return (size, size, 3)

    def text_diff(self, picture: np.ndarray, caption: str, target: str, thetas: Sequence[float],
                  seed: int, with_captions: bool = False, eta: float | None = None) -> np.ndarray:
        """Images along slerp(z_i, normalize(z_target - z_caption), theta) from the inverted latent (sec. 3.3).

        The paper's text diff moves the embedding alone: the latent is inverted and decoded
        without a caption. `with_captions` (our extension, possible because this decoder also
        reads the caption, GLIDE style) inverts under `caption` and decodes under `target`.
        `eta`: DDIM noise of the decoding (default: the run's `decoder.text_diff_eta`).
        """
        z_i = self.image_embeddings(picture[None])
        z_t0, z_t = self.text_embeddings([caption, target])
        z_d = np.asarray(_normalize(jnp.asarray(z_t - z_t0)))
        thetas = np.asarray(thetas, np.float32)
        embeds = np.asarray(_normalize(slerp(jnp.asarray(z_i), jnp.asarray(z_d[None]), thetas)))
        source_tokens, target_tokens = None, None
        if with_captions:
            source_tokens, target_tokens = self.tokens([caption]), np.repeat(self.tokens([target]), len(thetas), 0)
        x_T = np.repeat(self.invert(picture[None], z_i, source_tokens), len(thetas), axis=0)
        return self._manipulate(embeds, [seed] * len(thetas), x_T, self.text_diff_eta if eta is None else eta,
                                tokens=target_tokens)
