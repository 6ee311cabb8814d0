"""Diffusion over images, shared by the decoder and the upsamplers (unCLIP sec. 2.1, appendix C).

(`check_process` and `check_sampling` also check the prior's sections, which have the same fields.)

Holds the two config sections both image stages have (`diffusion`: forward process and
objective; `sampling`: reverse process) and `ImageDiffusion`, which turns a UNet's `apply` into a
training loss and a sampler. Images are float32 in [-1, 1]; every x0 estimate is clipped to that
range while sampling (ADM's `clip_denoised`).

Learned variance (Nichol & Dhariwal 2021, "Improved DDPM", sec. 3.1; unCLIP's decoder uses it):
with `diffusion.learned_variance` the UNet has 6 output channels, the last three interpolating
the log variance; the loss is L_simple + vlb_weight * T * L_vlb (the VLB trains the variance
only), and the DDPM sampler uses the learned variance (DDIM and DPM-Solver++ fix their own).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from dalle2_jax.diffusion import objectives, samplers, schedules
from dalle2_jax.parallel.mesh import ConfigError

SAMPLERS = ("ddpm", "ddim", "dpm_solver_pp_2m")
IMAGE_CHANNELS = 3


def diffusion_config(objective: str = "eps", schedule: str = "cosine") -> ml_collections.ConfigDict:
    """The `diffusion` section: forward process and training objective."""
    d = ml_collections.ConfigDict()
    d.schedule = schedule  # 'cosine' or 'linear'
    d.num_timesteps = 1000  # T of the training schedule
    d.objective = objective  # what the UNet predicts: 'eps' (ADM, unCLIP), 'x0' or 'v'
    d.loss_weighting = "uniform"  # 'uniform', 'min_snr' or 'truncated_snr' (diffusion/objectives.py)
    d.learned_variance = False  # 6 output channels and the hybrid loss (Improved DDPM)
    d.vlb_weight = 0.001  # weight of the VLB term with a learned variance (Improved DDPM's lambda)
    return d


def sampling_config(num_steps: int = 50, guidance_scale: float = 1.0) -> ml_collections.ConfigDict:
    """The `sampling` section: how images are drawn at evaluation and generation time."""
    s = ml_collections.ConfigDict()
    s.sampler = "ddim"  # 'ddpm' (uses a learned variance), 'ddim' or 'dpm_solver_pp_2m'
    s.num_steps = num_steps  # strided sampling steps
    s.eta = 0.0  # DDIM noise (0 = deterministic)
    s.guidance_scale = guidance_scale  # classifier-free guidance (1 = conditional model only)
    return s


def check_process(diffusion: ml_collections.ConfigDict) -> None:
    """Checks the forward-process fields every diffusion stage (prior too) has; ConfigError names them."""
    for field, allowed in (("objective", objectives.OBJECTIVES), ("loss_weighting", objectives.LOSS_WEIGHTS),
                           ("schedule", schedules.SCHEDULES)):
        if diffusion[field] not in allowed:
            raise ConfigError(f"diffusion.{field}={diffusion[field]!r}: expected one of {allowed}")
    if not isinstance(diffusion.num_timesteps, int) or diffusion.num_timesteps < 2:
        raise ConfigError(f"diffusion.num_timesteps={diffusion.num_timesteps!r}: must be an integer >= 2")


def validate_sections(config: ml_collections.ConfigDict) -> None:
    """Checks `diffusion` and `sampling`; raises ConfigError naming the field."""
    check_process(config.diffusion)
    if config.diffusion.vlb_weight < 0:
        raise ConfigError(f"diffusion.vlb_weight={config.diffusion.vlb_weight}: must be >= 0")
    check_sampling(config.sampling, config.diffusion.num_timesteps, "sampling")


def check_sampling(sampling: ml_collections.ConfigDict, num_timesteps: int, prefix: str) -> None:
    """Checks a sampling section (also the sample command's overrides); ConfigError names `prefix.field`."""
    if sampling.sampler not in SAMPLERS:
        raise ConfigError(f"{prefix}.sampler={sampling.sampler!r}: expected one of {SAMPLERS}")
    if not isinstance(sampling.num_steps, int) or not 1 <= sampling.num_steps <= num_timesteps:
        raise ConfigError(f"{prefix}.num_steps={sampling.num_steps!r}: must be an integer in "
                          f"[1, diffusion.num_timesteps={num_timesteps}]")
    if sampling.eta < 0:
        raise ConfigError(f"{prefix}.eta={sampling.eta}: must be >= 0")
    if sampling.guidance_scale < 0:
        raise ConfigError(f"{prefix}.guidance_scale={sampling.guidance_scale}: must be >= 0 "
                          "(1 = no guidance, larger = stronger)")


# cond_model_fn(x_t, t, use_condition) -> raw UNet output; use_condition False rows get the null condition.
CondModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class ImageDiffusion:
    """Training loss and sampler for an image UNet, from the `diffusion` and `sampling` sections."""

    def __init__(self, diffusion: ml_collections.ConfigDict, sampling: ml_collections.ConfigDict):
        self.diffusion = diffusion
        self.sampling = sampling
        self.schedule = schedules.make_schedule(diffusion.schedule, diffusion.num_timesteps)
        self.sampling_schedule = schedules.respace(self.schedule, sampling.num_steps)
        self.weights = (None if diffusion.loss_weighting == "uniform" else
                        objectives.loss_weights(diffusion.loss_weighting, diffusion.objective, self.schedule))

    @property
    def out_channels(self) -> int:
        """UNet output channels: the prediction, plus the variance interpolation if learned."""
        return 2 * IMAGE_CHANNELS if self.diffusion.learned_variance else IMAGE_CHANNELS

    def _split(self, output: jax.Array) -> samplers.ModelOutput:
        output = output.astype(jnp.float32)
        if not self.diffusion.learned_variance:
            return output
        return output[..., :IMAGE_CHANNELS], output[..., IMAGE_CHANNELS:]

    def loss(self, apply: Callable[[jax.Array, jax.Array], jax.Array], x0: jax.Array,
             rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Per-example loss [B] of `apply(x_t, t)` (the UNet with its conditioning bound) on images
        x0, and the mean squared error of its x0 estimate (a scale-free progress metric)."""
        t_rng, noise_rng = jax.random.split(rng)
        t = jax.random.randint(t_rng, (x0.shape[0],), 0, self.schedule.num_timesteps)
        noise = jax.random.normal(noise_rng, x0.shape)
        x_t = objectives.q_sample(self.schedule, x0, t, noise)
        output = self._split(apply(x_t, t))
        objective = self.diffusion.objective
        if self.diffusion.learned_variance:
            prediction, var_interp = output
            loss = objectives.hybrid_loss(objective, prediction, var_interp, x0, noise, t, self.schedule,
                                          self.diffusion.vlb_weight, self.weights)
        else:
            prediction = output
            loss = objectives.diffusion_loss(objective, prediction, x0, noise, t, self.schedule, self.weights)
        x0_hat = objectives.to_x0_and_eps(objective, prediction, x_t, t, self.schedule)[0]
        return loss, {"x0_mse": jnp.mean(jnp.square(jnp.clip(x0_hat, -1, 1) - x0))}

    def sample(self, cond_model_fn: CondModelFn, shape: tuple[int, ...], rng: jax.Array,
               sampling: ml_collections.ConfigDict | None = None, x_T: jax.Array | None = None) -> jax.Array:
        """Images [B, H, W, 3] in [-1, 1]; `sampling` overrides the config's section (same fields)."""
        sampling = sampling or self.sampling
        schedule = (self.sampling_schedule if sampling.num_steps == self.sampling.num_steps
                    else schedules.respace(self.schedule, sampling.num_steps))
        model_fn = self.guided(cond_model_fn, sampling.guidance_scale)
        objective = self.diffusion.objective
        if sampling.sampler == "ddpm":
            x = samplers.ddpm_sample(model_fn, schedule, shape, rng, objective, clip_x0=1.0, x_T=x_T)
        elif sampling.sampler == "ddim":
            x = samplers.ddim_sample(model_fn, schedule, shape, rng, objective, eta=sampling.eta, clip_x0=1.0,
                                     x_T=x_T)
        else:
            x = samplers.dpm_solver_pp_2m_sample(model_fn, schedule, shape, rng, objective, clip_x0=1.0, x_T=x_T)
        return jnp.clip(x, -1.0, 1.0)

    def invert(self, cond_model_fn: CondModelFn, x0: jax.Array, sampling: ml_collections.ConfigDict | None = None,
               refine_steps: int = 0) -> jax.Array:
        """The DDIM latent x_T of x0 (unCLIP sec. 3.1): what `sample` with DDIM, eta = 0 and the
        steps and guidance of `sampling` (the config's by default) maps back to x0. Inverting
        with the very model function and x0 clipping that decode it is what makes the round trip
        close; `refine_steps` fixed-point refinements per step (`samplers.ddim_invert`) close it
        further."""
        sampling = sampling or self.sampling
        schedule = schedules.respace(self.schedule, sampling.num_steps)
        model_fn = self.guided(cond_model_fn, sampling.guidance_scale)
        return samplers.ddim_invert(model_fn, schedule, x0, self.diffusion.objective, refine_steps, clip_x0=1.0)

    def guided(self, cond_model_fn: CondModelFn, guidance_scale: float) -> samplers.ModelFn:
        """model_fn(x_t, t) of the sampler: the conditional model, or classifier-free guidance."""
        if guidance_scale == 1.0:
            return lambda x_t, t: self._split(cond_model_fn(x_t, t, jnp.ones((x_t.shape[0],), bool)))
        return samplers.classifier_free_guidance(lambda x, t, c: self._split(cond_model_fn(x, t, c)),
                                                 guidance_scale)
