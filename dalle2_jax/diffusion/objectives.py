"""What the denoiser predicts, what it is trained against, and the losses.

- q_sample: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (Ho et al. 2020, "Denoising
  Diffusion Probabilistic Models", eq. 4). Write a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t).
- Three parameterisations of the same denoiser, exact conversions given x_t: "eps" (DDPM),
  "x0" (the unCLIP prior predicts the clean embedding, Ramesh et al. 2022, sec 2.2) and
  "v" = a eps - s x_0 (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of
  Diffusion Models", sec 4), with x_0 = a x_t - s v and eps = s x_t + a v.
- The posterior q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7), from the schedule's tables.
- L_simple (DDPM eq. 14) for any parameterisation, with optional per-timestep weights:
  "uniform", or "min_snr" (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
  Strategy"): the x0-space weight min(SNR_t, gamma) rewritten for the objective that is
  regressed, since ||x0 error||^2 = ||eps error||^2 / SNR = ||v error||^2 / (SNR + 1) at fixed x_t.
  So eps: min(SNR, gamma) / SNR, x0: min(SNR, gamma), v: min(SNR, gamma) / (SNR + 1); gamma = 5.
  Or "truncated_snr": the x0-space weight clip(SNR_t, 1, gamma), rewritten the same way. It keeps
  x0's uniform weight where the image is mostly noise (SNR < 1) and, like eps, weights the
  nearly clean steps by their SNR, up to gamma: Salimans & Ho 2022's "truncated SNR" weighting
  max(SNR, 1) (sec 4), capped as min-SNR caps it. Not in the unCLIP paper; see
  configs/shapes/decoder.py for why the shapes decoder uses it.
- Learned variance (Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models",
  sec 3.1): the model outputs, beside its prediction, `var_interp` in [-1, 1] with x_t's shape;
  log Sigma = frac log beta_t + (1 - frac) log beta~_t with frac = (var_interp + 1) / 2. It is
  trained by the hybrid loss L_simple + lambda L_vlb (lambda = 0.001), where the sampled VLB term
  L_t (KL of Gaussians, or the discretized Gaussian decoder NLL at t = 0, in bits per dimension)
  stands for L_vlb / T, hence the factor T below, and the mean gets no gradient from it
  (stop-gradient), exactly as Improved DDPM's code with rescaled learned sigmas.

Indices `t` are int32 [B] positions in the schedule passed (the original timesteps for a full
schedule). Coefficients are float32 and results follow JAX promotion: float32 for bfloat16
inputs. The VLB casts its inputs to float32 before any log or exp.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from dalle2_jax.diffusion.schedules import Schedule, log_snr

OBJECTIVES = ("eps", "x0", "v")
LOSS_WEIGHTS = ("uniform", "min_snr", "truncated_snr")

# Images in [-1, 1] quantised to 256 levels: bins of width 2 / 255 around each level.
_HALF_BIN = 1.0 / 255.0
_EDGE = 0.999
_MIN_LOG_PROB_GAP = 1e-12


def check_objective(objective: str) -> None:
    """Raise a ValueError unless `objective` is one of `OBJECTIVES`."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown diffusion objective {objective!r}: expected one of {OBJECTIVES}")


def _at(table: jax.Array, t: jax.Array, like: jax.Array) -> jax.Array:
    """table[t] shaped [B, 1, ...] to broadcast against `like` [B, ...]."""
    values = table[t]
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def _mean_over_dims(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1).mean(axis=1)


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = a x0 + s noise."""
    return _at(schedule.sqrt_alphas_cumprod, t, x0) * x0 + _at(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def x0_from_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """x0 = (x_t - s eps) / a."""
    return (x_t - _at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / _at(schedule.sqrt_alphas_cumprod, t, x_t)


def eps_from_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """eps = (x_t - a x0) / s."""
    return (x_t - _at(schedule.sqrt_alphas_cumprod, t, x_t) * x0) / _at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)


def v_from_x0_eps(schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """v = a eps - s x0."""
    return _at(schedule.sqrt_alphas_cumprod, t, x0) * eps - _at(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0


def x0_from_v(schedule: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """x0 = a x_t - s v."""
    return _at(schedule.sqrt_alphas_cumprod, t, x_t) * x_t - _at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * v


def eps_from_v(schedule: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """eps = s x_t + a v."""
    return _at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t + _at(schedule.sqrt_alphas_cumprod, t, x_t) * v


def to_x0_and_eps(
    objective: str, prediction: jax.Array, x_t: jax.Array, t: jax.Array, schedule: Schedule
) -> tuple[jax.Array, jax.Array]:
    """(x0, eps) implied by a model's `prediction` of kind `objective` at x_t, in float32."""
    check_objective(objective)
    prediction, x_t = prediction.astype(jnp.float32), x_t.astype(jnp.float32)
    if objective == "eps":
        return x0_from_eps(schedule, x_t, t, prediction), prediction
    if objective == "x0":
        return prediction, eps_from_x0(schedule, x_t, t, prediction)
    return x0_from_v(schedule, x_t, t, prediction), eps_from_v(schedule, x_t, t, prediction)


def target(objective: str, x0: jax.Array, noise: jax.Array, t: jax.Array, schedule: Schedule) -> jax.Array:
    """What a model of kind `objective` regresses for x_t = q_sample(schedule, x0, t, noise)."""
    check_objective(objective)
    if objective == "eps":
        return noise
    if objective == "x0":
        return x0
    return v_from_x0_eps(schedule, x0, t, noise)


def loss_weights(kind: str, objective: str, schedule: Schedule, gamma: float = 5.0) -> jax.Array:
    """Per-timestep weights [T] for `diffusion_loss`: 'uniform', 'min_snr' or 'truncated_snr' (see the module doc)."""
    check_objective(objective)
    if kind == "uniform":
        return jnp.ones((schedule.num_timesteps,), jnp.float32)
    if kind not in LOSS_WEIGHTS:
        raise ValueError(f"unknown loss weighting {kind!r}: expected one of {LOSS_WEIGHTS}")
    snr = jnp.exp(log_snr(schedule))
    x0_weight = jnp.minimum(snr, gamma) if kind == "min_snr" else jnp.clip(snr, 1.0, gamma)
    return {"x0": x0_weight, "eps": x0_weight / snr, "v": x0_weight / (snr + 1.0)}[objective]


def diffusion_loss(
    objective: str,
    prediction: jax.Array,
    x0: jax.Array,
    noise: jax.Array,
    t: jax.Array,
    schedule: Schedule,
    weights: jax.Array | None = None,
) -> jax.Array:
    """L_simple per example [B]: mean squared error over non-batch dims, times weights[t] if given."""
    error = prediction.astype(jnp.float32) - target(objective, x0, noise, t, schedule).astype(jnp.float32)
    loss = _mean_over_dims(jnp.square(error))
    return loss if weights is None else loss * weights[t]


def q_posterior(schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and clipped log variance ([B, 1, ...]) of q(x_{t-1} | x_t, x0)."""
    mean = _at(schedule.posterior_mean_coef_x0, t, x_t) * x0 + _at(schedule.posterior_mean_coef_xt, t, x_t) * x_t
    return mean, _at(schedule.posterior_log_variance_clipped, t, x_t)


def learned_log_variance(schedule: Schedule, t: jax.Array, var_interp: jax.Array) -> jax.Array:
    """log Sigma between log beta_t (var_interp = 1) and the clipped log posterior variance (-1)."""
    frac = (var_interp.astype(jnp.float32) + 1.0) / 2.0
    log_beta = _at(jnp.log(schedule.betas), t, var_interp)
    return frac * log_beta + (1.0 - frac) * _at(schedule.posterior_log_variance_clipped, t, var_interp)


def normal_kl(mean1: jax.Array, log_var1: jax.Array, mean2: jax.Array, log_var2: jax.Array) -> jax.Array:
    """KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))) elementwise, in nats.

    Written as (expm1(r) - r + (mean1 - mean2)^2 / var2) / 2 with r = log_var1 - log_var2, which
    keeps small KLs (noisy steps: 1e-8 nats) from cancelling to 0 in float32.
    """
    log_ratio = log_var1 - log_var2
    return 0.5 * (jnp.expm1(log_ratio) - log_ratio + jnp.square(mean1 - mean2) * jnp.exp(-log_var2))


def _log_normal_interval(lower: jax.Array, upper: jax.Array) -> jax.Array:
    """log(Phi(upper) - Phi(lower)) for lower < upper, evaluated in the lower tail for precision."""
    flip = lower + upper > 0
    lower, upper = jnp.where(flip, -upper, lower), jnp.where(flip, -lower, upper)
    log_upper = log_ndtr(upper)
    gap = jnp.minimum(log_ndtr(lower) - log_upper, -_MIN_LOG_PROB_GAP)
    return log_upper + jnp.log(-jnp.expm1(gap))


def discretized_gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_var: jax.Array) -> jax.Array:
    """log P(x) elementwise (nats) for x in [-1, 1] on 256 levels under N(mean, exp(log_var)).

    Each level owns a bin of width 2/255; the outermost bins extend to -inf and +inf (DDPM sec 3.3).
    """
    inv_std = jnp.exp(-0.5 * log_var)
    lower = (x - mean - _HALF_BIN) * inv_std
    upper = (x - mean + _HALF_BIN) * inv_std
    return jnp.where(
        x < -_EDGE, log_ndtr(upper), jnp.where(x > _EDGE, log_ndtr(-lower), _log_normal_interval(lower, upper))
    )


def vlb_term(
    schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array, model_x0: jax.Array, var_interp: jax.Array
) -> jax.Array:
    """The VLB term L_t per example [B] in bits per dimension, for a model whose reverse step
    p(x_{t-1} | x_t) has the posterior mean at `model_x0` and the learned variance `var_interp`:
    KL(q(x_{t-1} | x_t, x0) || p) for t > 0, the decoder's -log p(x0 | x_1) for t = 0."""
    x0, x_t, model_x0 = (a.astype(jnp.float32) for a in (x0, x_t, model_x0))
    true_mean, true_log_var = q_posterior(schedule, x0, x_t, t)
    model_mean, _ = q_posterior(schedule, model_x0, x_t, t)
    model_log_var = learned_log_variance(schedule, t, var_interp)
    kl = _mean_over_dims(normal_kl(true_mean, true_log_var, model_mean, model_log_var))
    nll = -_mean_over_dims(discretized_gaussian_log_likelihood(x0, model_mean, model_log_var))
    return jnp.where(t == 0, nll, kl) / math.log(2.0)


def hybrid_loss(
    objective: str,
    prediction: jax.Array,
    var_interp: jax.Array,
    x0: jax.Array,
    noise: jax.Array,
    t: jax.Array,
    schedule: Schedule,
    vlb_weight: float = 0.001,
    weights: jax.Array | None = None,
) -> jax.Array:
    """L_simple + vlb_weight * T * L_t per example [B]; L_t trains the variance only (stop-gradient mean)."""
    x_t = q_sample(schedule, x0, t, noise)
    model_x0, _ = to_x0_and_eps(objective, jax.lax.stop_gradient(prediction), x_t, t, schedule)
    vlb = vlb_term(schedule, x0, x_t, t, model_x0, var_interp)
    simple = diffusion_loss(objective, prediction, x0, noise, t, schedule, weights)
    return simple + vlb_weight * schedule.num_timesteps * vlb
