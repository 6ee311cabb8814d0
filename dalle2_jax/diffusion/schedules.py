"""Noise schedules: the tables of the forward process, log-SNR, and respacing.

The forward process is q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) with
alpha_bar_t = prod_{s <= t} (1 - beta_s) (Ho et al. 2020, "Denoising Diffusion Probabilistic
Models", eq. 4). Two beta schedules:

- cosine (Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models", eq. 17):
  f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2) with s = 0.008 and
  beta_t = min(1 - f(t + 1) / f(t), 0.999), so alpha_bar_t = f(t + 1) / f(0) until the cap bites;
- linear (Ho et al. 2020, sec 4): betas from 1e-4 to 0.02 over T = 1000 steps, scaled by 1000 / T
  for other T as in Improved DDPM's code, so the total amount of noise stays about the same.

Respacing (Improved DDPM, sec 4; Song et al. 2021, "Denoising Diffusion Implicit Models",
sec 4.2) keeps a subsequence of the timesteps and recomputes betas from the kept alpha_bar, so a
model trained on T steps can sample in fewer; `Schedule.timesteps` keeps the original indices the
model must be called with.

Every table is computed in float64 numpy and stored in float32. 1 - alpha_bar is carried
separately from alpha_bar (as `sqrt_one_minus_alphas_cumprod`) because alpha_bar is within 1e-4
of 1 at the first cosine steps, where `1 - float32(alpha_bar)` would lose three digits. The
posterior q(x_{t-1} | x_t, x_0) tables (DDPM eqs. 6-7) are precomputed here too, for the same
reason; `objectives` reads them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

_COSINE_OFFSET = 0.008
_MAX_BETA = 0.999


@struct.dataclass
class Schedule:
    """Per-step tables of a (possibly respaced) schedule; entry i is the i-th kept timestep.

    All arrays are float32 [num_timesteps] except `timesteps` (int32: the original timestep of
    each entry, what a model trained on the full schedule is called with).
    `posterior_log_variance_clipped` replaces the zero variance at entry 0 by that of entry 1
    (Improved DDPM's code), so it stays finite.
    """

    betas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef_x0: jax.Array
    posterior_mean_coef_xt: jax.Array
    timesteps: jax.Array
    num_timesteps: int = struct.field(pytree_node=False)


def _f32(a: np.ndarray) -> jax.Array:
    return jnp.asarray(a, jnp.float32)


def _build(alphas_cumprod: np.ndarray, one_minus_alphas_cumprod: np.ndarray, timesteps: np.ndarray) -> Schedule:
    """All tables from alpha_bar and 1 - alpha_bar (float64) at the kept steps."""
    ac, om = alphas_cumprod, one_minus_alphas_cumprod
    ac_prev = np.append(1.0, ac[:-1])
    om_prev = np.append(0.0, om[:-1])
    # beta_i = 1 - alpha_bar_i / alpha_bar_{i-1}: from differences of 1 - alpha_bar while alpha_bar is near 1
    # (small betas), from the ratio once it is not (betas near 1), each precise where the other cancels.
    betas = np.where(ac_prev > 0.5, (om - om_prev) / ac_prev, 1.0 - ac / ac_prev)
    posterior_variance = betas * om_prev / om
    first_nonzero = posterior_variance[1] if len(ac) > 1 else betas[0]
    posterior_log_variance_clipped = np.log(np.append(first_nonzero, posterior_variance[1:]))
    return Schedule(
        betas=_f32(betas),
        alphas_cumprod=_f32(ac),
        alphas_cumprod_prev=_f32(ac_prev),
        sqrt_alphas_cumprod=_f32(np.sqrt(ac)),
        sqrt_one_minus_alphas_cumprod=_f32(np.sqrt(om)),
        posterior_variance=_f32(posterior_variance),
        posterior_log_variance_clipped=_f32(posterior_log_variance_clipped),
        posterior_mean_coef_x0=_f32(betas * np.sqrt(ac_prev) / om),
        posterior_mean_coef_xt=_f32(om_prev * np.sqrt(1.0 - betas) / om),
        timesteps=jnp.asarray(timesteps, jnp.int32),
        num_timesteps=len(ac),
    )


def from_betas(betas: np.ndarray) -> Schedule:
    """A full (unrespaced) schedule from its betas."""
    betas = np.asarray(betas, np.float64)
    log_alphas_cumprod = np.cumsum(np.log1p(-betas))
    return _build(np.exp(log_alphas_cumprod), -np.expm1(log_alphas_cumprod), np.arange(len(betas)))


def cosine_schedule(num_timesteps: int) -> Schedule:
    """Nichol & Dhariwal's cosine schedule over `num_timesteps` steps."""
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2
    return from_betas(np.minimum(1.0 - f[1:] / f[:-1], _MAX_BETA))


def linear_schedule(num_timesteps: int) -> Schedule:
    """DDPM's linear schedule, scaled by 1000 / T so that other step counts add as much noise."""
    scale = 1000.0 / num_timesteps
    return from_betas(np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64))


_SCHEDULES = {"cosine": cosine_schedule, "linear": linear_schedule}
SCHEDULES = tuple(sorted(_SCHEDULES))


def make_schedule(kind: str, num_timesteps: int) -> Schedule:
    """The schedule named `kind` ('cosine' or 'linear') over `num_timesteps` steps."""
    if kind not in _SCHEDULES:
        raise ValueError(f"unknown noise schedule {kind!r}: expected one of {SCHEDULES}")
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps={num_timesteps}: must be at least 1")
    return _SCHEDULES[kind](num_timesteps)


def respace(schedule: Schedule, num_steps: int) -> Schedule:
    """Keep `num_steps` evenly strided timesteps of `schedule`, always including the last one.

    Kept alpha_bar values are copied unchanged; betas become 1 - alpha_bar_i / alpha_bar_{i-1}
    between kept steps (Improved DDPM's `space_timesteps`). The first entry is always step 0.
    Respacing a respaced schedule composes (`timesteps` stays the original indices). Runs on the
    host: the schedule's arrays must be concrete.
    """
    n = schedule.num_timesteps
    if not 1 <= num_steps <= n:
        raise ValueError(f"respace: num_steps={num_steps} must be between 1 and the schedule's {n} steps")
    # Counted down from the last step so that num_steps=1 keeps the last one; distinct since the stride is >= 1.
    keep = np.round(np.linspace(n - 1, 0, num_steps))[::-1].astype(np.int64)
    alphas_cumprod = np.asarray(schedule.alphas_cumprod, np.float64)[keep]
    one_minus = np.asarray(schedule.sqrt_one_minus_alphas_cumprod, np.float64)[keep] ** 2
    return _build(alphas_cumprod, one_minus, np.asarray(schedule.timesteps)[keep])


def log_snr(schedule: Schedule) -> jax.Array:
    """log(alpha_bar / (1 - alpha_bar)) per entry (float32): twice DPM-Solver's lambda = log(alpha / sigma)."""
    return 2.0 * (jnp.log(schedule.sqrt_alphas_cumprod) - jnp.log(schedule.sqrt_one_minus_alphas_cumprod))
