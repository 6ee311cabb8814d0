"""Reverse processes: DDPM, DDIM (+ inversion), DPM-Solver++(2M), and classifier-free guidance.

Model convention. `model_fn(x_t, t)` takes x_t (float32 [B, ...]) and `t`, int32 [B] ORIGINAL
timesteps (`schedule.timesteps[i]`, so a model trained on T steps runs unchanged on a respaced
schedule), and returns its prediction with x_t's shape, read as `objective` ("eps", "x0" or "v").
A model with a learned variance returns the tuple `(prediction, var_interp)`, var_interp in
[-1, 1] with x_t's shape interpolating the log variance between log beta_t and the log posterior
variance (Nichol & Dhariwal 2021, "Improved DDPM", sec 3.1; see `objectives`). Only the DDPM
sampler uses it: DDIM and DPM-Solver++ fix their own noise.

Samplers. Each is one `lax.fori_loop` over the schedule's entries, from the last (noisiest) to
entry 0, and is meant to be called inside `jax.jit` (shapes, the objective, `eta` and `clip_x0`
static; the schedule and rng may be traced): one compiled body whatever the number of steps.
Every sampler takes an optional initial `x_T` (unCLIP, Ramesh et al. 2022, sec 3, fixes or slerps
it for variations and interpolations) and returns the final x_0 in float32. `clip_x0` clamps each
x0 estimate to [-clip_x0, clip_x0] (1 for images in [-1, 1]; None for CLIP embeddings), and eps
is recomputed from the clamped x0 so that the step stays consistent.

- `ddpm_sample`: ancestral sampling from p(x_{t-1} | x_t) = q(x_{t-1} | x_t, x0_hat) (Ho et al.
  2020, "Denoising Diffusion Probabilistic Models", Algorithm 2). Fixed variance: the posterior
  variance beta~_t of the (respaced) schedule, DDPM's "sigma^2 = beta~" choice, which is exact for a
  point-mass data distribution and is the variance Improved DDPM's learned variance starts from;
  with a learned variance the model's.
- `ddim_sample`: x_{t-1} = a_{t-1} x0_hat + sqrt(1 - a_{t-1}^2 - sigma^2) eps_hat + sigma z with
  sigma^2 = eta^2 beta~_t (Song et al. 2021, "Denoising Diffusion Implicit Models", eqs. 12, 16):
  eta = 0 is deterministic, eta = 1 is the DDPM sampler above with fixed variance.
- `ddim_invert`: the eta = 0 update run from x_0 towards x_T, with the prediction made at the
  current (less noisy) point, the standard approximation of the implicit inverse step, and
  optional fixed-point refinements of it.
- `dpm_solver_pp_2m_sample`: DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for
  Guided Sampling of Diffusion Probabilistic Models", Algorithm 2) in lambda = log(alpha / sigma)
  with data (x0) prediction; the first step and the last one (to the clean level, where
  lambda = inf) are first order, which is DDIM's step.
- `classifier_free_guidance` (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", eq. 6).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp

from dalle2_jax.diffusion.objectives import (
    check_objective,
    eps_from_x0,
    learned_log_variance,
    q_posterior,
    to_x0_and_eps,
)
from dalle2_jax.diffusion.schedules import Schedule, log_snr

ModelOutput = jax.Array | tuple[jax.Array, jax.Array]
ModelFn = Callable[[jax.Array, jax.Array], ModelOutput]
CondModelFn = Callable[[jax.Array, jax.Array, jax.Array], ModelOutput]
Carry = TypeVar("Carry")


def _split_output(output: ModelOutput) -> tuple[jax.Array, jax.Array | None]:
    """(prediction, var_interp or None) from a model's output."""
    return output if isinstance(output, tuple) else (output, None)


def classifier_free_guidance(cond_model_fn: CondModelFn, scale: float | jax.Array) -> ModelFn:
    """A model_fn that guides `cond_model_fn(x, t, use_condition)` with guidance `scale`.

    `cond_model_fn` is called once per step on the doubled batch [x; x] with `use_condition`
    (bool [2B]) True for the first half and False for the second, where the model must replace
    row b's condition by the null condition (it holds the [B] conditions itself; rows b and b + B
    are the same example). The result is uncond + scale * (cond - uncond): scale 1 is the
    conditional model, 0 the unconditional one. The combination is linear in the prediction, and
    eps, x0 and v are affine in one another at fixed x_t with the same coefficients for both
    halves, so guiding any of the three gives the same step. A learned variance is not guided:
    the conditional half's var_interp is returned.
    """

    def model_fn(x_t: jax.Array, t: jax.Array) -> ModelOutput:
        batch = x_t.shape[0]
        use_condition = jnp.arange(2 * batch) < batch
        output = cond_model_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), use_condition)
        prediction, var_interp = _split_output(output)
        prediction = prediction.astype(jnp.float32)
        cond, uncond = prediction[:batch], prediction[batch:]
        guided = uncond + scale * (cond - uncond)
        return guided if var_interp is None else (guided, var_interp[:batch])

    return model_fn


def _initial(
    shape: tuple[int, ...] | None, rng: jax.Array | None, x_T: jax.Array | None
) -> tuple[jax.Array, jax.Array | None]:
    """x_T in float32 (drawn from N(0, I) unless given) and the key left for the steps' noise."""
    if x_T is not None:
        x_T = jnp.asarray(x_T, jnp.float32)
        if shape is not None and tuple(shape) != x_T.shape:
            raise ValueError(f"shape={tuple(shape)} disagrees with x_T's shape {x_T.shape}")
        return x_T, rng
    if shape is None or rng is None:
        raise ValueError("a sampler needs x_T, or a shape and an rng to draw it")
    rng, init_rng = jax.random.split(rng)
    return jax.random.normal(init_rng, tuple(shape), jnp.float32), rng


def _step_noise(rng: jax.Array, i: jax.Array, like: jax.Array) -> jax.Array:
    """The fresh N(0, I) noise of the step leaving entry i (the same in DDPM and DDIM)."""
    return jax.random.normal(jax.random.fold_in(rng, i), like.shape, jnp.float32)


def _predict(
    model_fn: ModelFn, schedule: Schedule, objective: str, x: jax.Array, i: jax.Array, clip_x0: float | None
) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array]:
    """(x0_hat, eps_hat, var_interp or None, t) from one model call at schedule entry i; t: int32 [B] entries."""
    t = jnp.full((x.shape[0],), i, jnp.int32)
    output = model_fn(x, schedule.timesteps[t])
    prediction, var_interp = _split_output(output)
    x0, eps = to_x0_and_eps(objective, prediction, x, t, schedule)
    if clip_x0 is not None:
        x0 = jnp.clip(x0, -clip_x0, clip_x0)
        eps = eps_from_x0(schedule, x, t, x0)
    return x0, eps, var_interp, t


def _previous_level(schedule: Schedule, i: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(alpha, sigma) = (sqrt(alpha_bar), sqrt(1 - alpha_bar)) of entry i - 1; (1, 0) below entry 0."""
    j = jnp.maximum(i - 1, 0)
    alpha = jnp.where(i > 0, schedule.sqrt_alphas_cumprod[j], 1.0)
    sigma = jnp.where(i > 0, schedule.sqrt_one_minus_alphas_cumprod[j], 0.0)
    return alpha, sigma


def _reverse_loop(schedule: Schedule, step: Callable[[jax.Array, Carry], Carry], init: Carry) -> Carry:
    """fori_loop of step(i, carry) for entries i = N-1, ..., 0."""
    n = schedule.num_timesteps
    return jax.lax.fori_loop(0, n, lambda k, carry: step(n - 1 - k, carry), init)


def ddpm_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    shape: tuple[int, ...] | None,
    rng: jax.Array,
    objective: str,
    clip_x0: float | None = None,
    x_T: jax.Array | None = None,
) -> jax.Array:
    """Ancestral sampling over `schedule`: posterior variance, or the model's learned one."""
    check_objective(objective)
    if rng is None:
        raise ValueError("ddpm_sample needs an rng: every step adds noise")
    x, rng = _initial(shape, rng, x_T)

    def step(i: jax.Array, x: jax.Array) -> jax.Array:
        x0, _, var_interp, t = _predict(model_fn, schedule, objective, x, i, clip_x0)
        mean, log_var = q_posterior(schedule, x0, x, t)
        if var_interp is not None:
            log_var = learned_log_variance(schedule, t, var_interp)
        return mean + jnp.where(i > 0, jnp.exp(0.5 * log_var), 0.0) * _step_noise(rng, i, x)

    return _reverse_loop(schedule, step, x)


def ddim_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    shape: tuple[int, ...] | None,
    rng: jax.Array | None,
    objective: str,
    eta: float = 0.0,
    clip_x0: float | None = None,
    x_T: jax.Array | None = None,
) -> jax.Array:
    """DDIM over `schedule`; `eta` (a Python float) scales the noise, 0 is deterministic."""
    check_objective(objective)
    if eta < 0:
        raise ValueError(f"ddim_sample: eta={eta} must be >= 0")
    if eta > 0 and rng is None:
        raise ValueError(f"ddim_sample: eta={eta} adds noise and needs an rng")
    x, rng = _initial(shape, rng, x_T)

    def step(i: jax.Array, x: jax.Array) -> jax.Array:
        x0, eps, _, _ = _predict(model_fn, schedule, objective, x, i, clip_x0)
        alpha_prev, sigma_prev = _previous_level(schedule, i)
        noise_var = eta**2 * schedule.posterior_variance[i]
        x_prev = alpha_prev * x0 + jnp.sqrt(jnp.maximum(sigma_prev**2 - noise_var, 0.0)) * eps
        return x_prev + jnp.sqrt(noise_var) * _step_noise(rng, i, x) if eta > 0 else x_prev

    return _reverse_loop(schedule, step, x)


def ddim_invert(
    model_fn: ModelFn, schedule: Schedule, x0: jax.Array, objective: str, refine_steps: int = 0,
    clip_x0: float | None = None,
) -> jax.Array:
    """x_T whose eta = 0 DDIM sample over `schedule` is (approximately) `x0`.

    DDIM's step from entry i to entry i - 1 (the clean level for i = 0) is
    x_{i-1} = a_{i-1} (x_i - s_i eps) / a_i + s_{i-1} eps with eps = eps_hat(x_i); solved for x_i,
    x_i = a_i (x_{i-1} - s_{i-1} eps) / a_{i-1} + s_i eps. Inversion takes eps from the point it
    has, eps_hat(x_{i-1}) at entry max(i - 1, 0) (the usual DDIM inversion, first order: the
    round trip is off by O(1 / N)), then `refine_steps` times re-evaluates eps at the new x_i,
    a fixed-point iteration towards the exact inverse of the sampler's step (it contracts where
    eps_hat varies slowly in x, everywhere but at the noisiest entries). Each refinement costs
    one more model call per step. `clip_x0` clamps each x0 estimate as the sampler that is to
    map x_T back does (`ddim_sample`'s), so that both run the same step.
    """
    check_objective(objective)

    def step(i: jax.Array, x: jax.Array) -> jax.Array:
        alpha_prev, sigma_prev = _previous_level(schedule, i)
        alpha, sigma = schedule.sqrt_alphas_cumprod[i], schedule.sqrt_one_minus_alphas_cumprod[i]

        def move(eps: jax.Array) -> jax.Array:
            return alpha * (x - sigma_prev * eps) / alpha_prev + sigma * eps

        def refine(_: int, x_new: jax.Array) -> jax.Array:
            return move(_predict(model_fn, schedule, objective, x_new, i, clip_x0)[1])

        _, eps, _, _ = _predict(model_fn, schedule, objective, x, jnp.maximum(i - 1, 0), clip_x0)
        return jax.lax.fori_loop(0, refine_steps, refine, move(eps))

    return jax.lax.fori_loop(0, schedule.num_timesteps, step, jnp.asarray(x0, jnp.float32))


def dpm_solver_pp_2m_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    shape: tuple[int, ...] | None,
    rng: jax.Array | None,
    objective: str,
    clip_x0: float | None = None,
    x_T: jax.Array | None = None,
) -> jax.Array:
    """DPM-Solver++(2M) over `schedule`'s entries (one model call each); rng only draws x_T."""
    check_objective(objective)
    x, _ = _initial(shape, rng, x_T)
    n = schedule.num_timesteps
    lam = 0.5 * log_snr(schedule)
    h = lam[:-1] - lam[1:]  # h[i - 1]: the step from entry i to entry i - 1
    # D = D_i + (D_i - D_{i+1}) / (2 r) with r = h_last / h_now, for the steps that leave entries 1..N-2.
    correction = jnp.zeros((n,), jnp.float32).at[1 : n - 1].set(h[:-1] / (2.0 * h[1:]))

    def step(i: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        x, last_x0 = carry
        x0, _, _, _ = _predict(model_fn, schedule, objective, x, i, clip_x0)
        data = x0 + correction[i] * (x0 - last_x0)
        alpha, sigma = schedule.sqrt_alphas_cumprod[i], schedule.sqrt_one_minus_alphas_cumprod[i]
        alpha_prev, sigma_prev = _previous_level(schedule, i)
        # sigma_prev / sigma x - alpha_prev (e^{-h} - 1) D, with e^{-h} = alpha sigma_prev / (sigma alpha_prev).
        return (sigma_prev / sigma) * x + (alpha_prev - alpha * sigma_prev / sigma) * data, x0

    x, _ = _reverse_loop(schedule, step, (x, jnp.zeros_like(x)))
    return x
