"""Diffusion machinery: schedules, parameterisations, losses and samplers.

The samplers are checked against data whose denoiser is known exactly: x0 ~ N(mu, diag sigma^2)
gives E[x0 | x_t] = mu + a sigma^2 (x_t - a mu) / (a^2 sigma^2 + s^2) with a = sqrt(alpha_bar_t),
s = sqrt(1 - alpha_bar_t). With it every sampler is an affine map of Gaussians, so the sampled
mean and variance, and the exact output variance of the deterministic samplers, are testable.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dalle2_jax.diffusion import objectives, samplers, schedules

T = 1000
BASE = schedules.cosine_schedule(T)
DIM = 8
MU = jnp.linspace(-1.0, 1.0, DIM)
SIGMA = jnp.linspace(0.5, 1.5, DIM)


def _cosine_alpha_bar(t: float) -> float:
    return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2


def gaussian_denoiser(objective: str, calls: list | None = None) -> samplers.ModelFn:
    """The exact denoiser of N(MU, SIGMA^2) data, called with original timesteps of BASE."""

    def model_fn(x_t: jax.Array, t: jax.Array) -> jax.Array:
        if calls is not None:
            calls.append(x_t.shape)
        a = BASE.sqrt_alphas_cumprod[t][:, None]
        s = BASE.sqrt_one_minus_alphas_cumprod[t][:, None]
        x0 = MU + a * SIGMA**2 * (x_t - a * MU) / (a**2 * SIGMA**2 + s**2)
        eps = (x_t - a * x0) / s
        return {"x0": x0, "eps": eps, "v": a * eps - s * x0}[objective]

    return model_fn


# ---------------------------------------------------------------- schedules


def test_cosine_schedule_matches_formula():
    ac = np.asarray(BASE.alphas_cumprod, np.float64)
    for t in (0, T // 2, T - 2):  # alpha_bar_t = f(t + 1) / f(0) below the beta cap
        np.testing.assert_allclose(ac[t], _cosine_alpha_bar(t + 1) / _cosine_alpha_bar(0), rtol=1e-5)
    # The last beta, 1 - f(T) / f(T - 1) = 1, is capped at 0.999, and only that one.
    np.testing.assert_allclose(float(BASE.betas[-1]), 0.999, rtol=1e-6)
    assert float(jnp.max(BASE.betas[:-1])) < 0.999
    np.testing.assert_allclose(ac[-1], ac[-2] * (1 - 0.999), rtol=1e-5)
    np.testing.assert_array_equal(BASE.alphas_cumprod_prev[1:], BASE.alphas_cumprod[:-1])
    assert float(BASE.alphas_cumprod_prev[0]) == 1.0
    np.testing.assert_array_equal(BASE.timesteps, np.arange(T))
    assert BASE.timesteps.dtype == jnp.int32 and BASE.betas.dtype == jnp.float32


@pytest.mark.parametrize("num_timesteps", [1000, 250])
def test_linear_schedule_endpoints_scale_with_steps(num_timesteps):
    schedule = schedules.make_schedule("linear", num_timesteps)
    scale = 1000 / num_timesteps
    np.testing.assert_allclose(np.asarray(schedule.betas)[[0, -1]], [scale * 1e-4, scale * 0.02], rtol=1e-6)
    expected = np.cumprod(1 - np.linspace(scale * 1e-4, scale * 0.02, num_timesteps))
    np.testing.assert_allclose(schedule.alphas_cumprod, expected, rtol=1e-5)


def test_make_schedule_names_unknown_kind():
    with pytest.raises(ValueError, match="sigmoid"):
        schedules.make_schedule("sigmoid", 10)


def test_respace_keeps_alpha_bar_and_original_timesteps():
    spaced = schedules.respace(BASE, 64)
    kept = np.asarray(spaced.timesteps)
    assert spaced.num_timesteps == 64 and kept[0] == 0 and kept[-1] == T - 1
    assert set(np.diff(kept)) <= {15, 16}  # evenly strided: 999 / 63 = 15.86
    np.testing.assert_array_equal(spaced.alphas_cumprod, BASE.alphas_cumprod[kept])
    ac = np.asarray(spaced.alphas_cumprod, np.float64)
    np.testing.assert_allclose(spaced.betas[1:], 1 - ac[1:] / ac[:-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(spaced.betas[0]), float(BASE.betas[0]), rtol=1e-5)
    # Respacing composes and keeps original indices; all steps is the identity; one step is the last.
    np.testing.assert_array_equal(schedules.respace(spaced, 64).timesteps, kept)
    np.testing.assert_array_equal(schedules.respace(BASE, T).alphas_cumprod, BASE.alphas_cumprod)
    np.testing.assert_array_equal(schedules.respace(BASE, 1).timesteps, [T - 1])
    for bad in (0, T + 1):
        with pytest.raises(ValueError, match="num_steps"):
            schedules.respace(BASE, bad)


def test_log_snr():
    ac = np.asarray(BASE.alphas_cumprod, np.float64)
    np.testing.assert_allclose(schedules.log_snr(BASE)[100:900], np.log(ac / (1 - ac))[100:900], rtol=1e-4,
                               atol=1e-6)  # atol: log SNR crosses 0 here (seen on GPU: 3.1084e-4 vs 3.1090e-4)
    assert bool(jnp.all(jnp.diff(schedules.log_snr(BASE)) < 0))


# ---------------------------------------------------------------- objectives


def _batch(schedule, shape=(16, 4, 3), max_t=None, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    x0 = jax.random.normal(keys[0], shape)
    noise = jax.random.normal(keys[1], shape)
    t = jax.random.randint(keys[2], shape[:1], 0, max_t or schedule.num_timesteps)
    return x0, noise, t


def test_conversions_round_trip():
    @jax.jit
    def pairs():
        # x0 from eps divides by a = sqrt(alpha_bar), 5e-5 at the last cosine step: stay where a > 0.15.
        x0, noise, t = _batch(BASE, max_t=900)
        x_t = objectives.q_sample(BASE, x0, t, noise)
        a, s = BASE.sqrt_alphas_cumprod[t][:, None, None], BASE.sqrt_one_minus_alphas_cumprod[t][:, None, None]
        got = {
            "q_sample": (x_t, a * x0 + s * noise),
            "x0_from_eps": (objectives.x0_from_eps(BASE, x_t, t, noise), x0),
            "eps_from_x0": (objectives.eps_from_x0(BASE, x_t, t, x0), noise),
        }
        for objective in objectives.OBJECTIVES:
            prediction = objectives.target(objective, x0, noise, t, BASE)
            got_x0, got_eps = objectives.to_x0_and_eps(objective, prediction, x_t, t, BASE)
            got[objective] = (jnp.stack([got_x0, got_eps]), jnp.stack([x0, noise]))
        # v is well conditioned at every step, the last ones included.
        t_last = jnp.arange(T - 16, T)
        x_t = objectives.q_sample(BASE, x0, t_last, noise)
        v = objectives.v_from_x0_eps(BASE, x0, t_last, noise)
        got["x0_from_v"] = (objectives.x0_from_v(BASE, x_t, t_last, v), x0)
        got["eps_from_v"] = (objectives.eps_from_v(BASE, x_t, t_last, v), noise)
        return got

    for name, (got, expected) in pairs().items():
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)
    with pytest.raises(ValueError, match="'score'"):
        objectives.target("score", jnp.zeros(2), jnp.zeros(2), jnp.zeros(2, jnp.int32), BASE)


def test_posterior_matches_joint_gaussian():
    """q(x_{t-1} | x_t, x0) by conditioning the joint Gaussian of (x_{t-1}, x_t) given x0."""
    spaced = schedules.respace(BASE, 64)
    x0, noise, t = _batch(spaced, shape=(64, 5), seed=1)
    t = t.at[0].set(1)
    x_t = objectives.q_sample(spaced, x0, t, noise)
    mean, log_var = jax.jit(objectives.q_posterior)(spaced, x0, x_t, t)
    ac = np.asarray(spaced.alphas_cumprod, np.float64)
    one_minus = np.asarray(spaced.sqrt_one_minus_alphas_cumprod, np.float64) ** 2  # 1 - float32(ac) loses digits
    ac, ac_prev = ac[t][:, None], np.append(1.0, ac[:-1])[t][:, None]
    one_minus, one_minus_prev = one_minus[t][:, None], np.append(0.0, one_minus[:-1])[t][:, None]
    cov = np.sqrt(ac / ac_prev) * one_minus_prev  # Cov(x_{t-1}, x_t | x0)
    expected_mean = np.sqrt(ac_prev) * x0 + cov / one_minus * (x_t - np.sqrt(ac) * x0)
    expected_var = one_minus_prev - cov**2 / one_minus
    keep = np.asarray(t) > 0
    np.testing.assert_allclose(mean[keep], expected_mean[keep], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.exp(log_var[keep]), expected_var[keep], rtol=1e-4)
    assert float(spaced.posterior_log_variance_clipped[0]) == float(spaced.posterior_log_variance_clipped[1])


def test_diffusion_loss_and_snr_weights():
    x0, noise, t = _batch(BASE, seed=2)
    x_t = objectives.q_sample(BASE, x0, t, noise)
    for objective in objectives.OBJECTIVES:
        exact = objectives.target(objective, x0, noise, t, BASE)
        assert objectives.diffusion_loss(objective, exact, x0, noise, t, BASE).shape == (16,)
        np.testing.assert_allclose(objectives.diffusion_loss(objective, exact, x0, noise, t, BASE), 0.0, atol=1e-10)
    # The same wrong denoiser, written as each parameterisation, has the same min-SNR loss:
    # the weights all mean min(SNR, 5) * ||x0 error||^2.
    wrong_x0 = x0 + 0.1 * jax.random.normal(jax.random.key(9), x0.shape)
    wrong_eps = objectives.eps_from_x0(BASE, x_t, t, wrong_x0)
    wrong = {"x0": wrong_x0, "eps": wrong_eps, "v": objectives.v_from_x0_eps(BASE, wrong_x0, t, wrong_eps)}
    # Likewise truncated SNR: clip(SNR, 1, 5) * ||x0 error||^2.
    snr = jnp.exp(schedules.log_snr(BASE))[t]
    x0_mse = jnp.mean(jnp.square(wrong_x0 - x0), axis=(1, 2))
    assert float(jnp.min(snr)) < 1.0 < 5.0 < float(jnp.max(snr))  # the batch reaches both clip bounds
    for kind, x0_weight in (("min_snr", jnp.minimum(snr, 5.0)), ("truncated_snr", jnp.clip(snr, 1.0, 5.0))):
        for objective in objectives.OBJECTIVES:
            loss = objectives.diffusion_loss(objective, wrong[objective], x0, noise, t, BASE,
                                             objectives.loss_weights(kind, objective, BASE))
            np.testing.assert_allclose(loss, x0_weight * x0_mse, rtol=2e-3, err_msg=f"{kind} {objective}")
    uniform = objectives.loss_weights("uniform", "eps", BASE)
    np.testing.assert_array_equal(
        objectives.diffusion_loss("eps", wrong_eps, x0, noise, t, BASE, uniform),
        objectives.diffusion_loss("eps", wrong_eps, x0, noise, t, BASE),
    )
    with pytest.raises(ValueError, match="'p2'"):
        objectives.loss_weights("p2", "eps", BASE)


# ---------------------------------------------------------------- learned variance


@pytest.mark.parametrize("mean,std", [(0.3, 0.05), (-0.99, 0.2), (0.0, 3.0), (0.5, 1e-3)])
def test_discretized_gaussian_likelihood_sums_to_one(mean, std):
    levels = jnp.linspace(-1.0, 1.0, 256)
    log_p = jax.jit(objectives.discretized_gaussian_log_likelihood)(levels, mean, 2 * math.log(std))
    np.testing.assert_allclose(float(jnp.sum(jnp.exp(log_p))), 1.0, atol=1e-5)


VLB = jax.jit(objectives.vlb_term)
HYBRID = jax.jit(objectives.hybrid_loss, static_argnums=0)


@jax.jit
def _vlb_batch():
    t = jnp.array([0, 1, 2, 5, 10, 50, 100, 200, 400, 600, 800, 900, 950, 990, 998, 999])
    x0, noise, _ = _batch(BASE, shape=(16, 3, 4, 4), seed=3)
    x0 = jnp.round(jnp.clip(x0 * 0.5, -1, 1) * 127.5) / 127.5  # on the 256 levels of an image
    keys = jax.random.split(jax.random.key(4))
    model_x0 = x0 + 0.05 * jax.random.normal(keys[0], x0.shape)
    var_interp = jnp.tanh(jax.random.normal(keys[1], x0.shape))
    return x0, noise, t, objectives.q_sample(BASE, x0, t, noise), model_x0, var_interp


def test_vlb_of_matching_gaussians_is_zero():
    x0, _, t, x_t, _, _ = _vlb_batch()
    np.testing.assert_allclose(objectives.normal_kl(x0, jnp.log(0.3), x0, jnp.log(0.3)), 0.0, atol=1e-7)
    # var_interp = -1 is the posterior variance itself; with the true x0 the KL terms vanish.
    vlb = VLB(BASE, x0, x_t, t, x0, -jnp.ones_like(x0))
    np.testing.assert_allclose(vlb[1:], 0.0, atol=1e-5)
    assert float(vlb[0]) > 0.0  # t = 0 is the decoder NLL, in bits
    moved = VLB(BASE, x0, x_t, t, x0 + 0.1, -jnp.ones_like(x0))
    assert bool(jnp.all(moved[1:] > 0.0))


def test_vlb_finite_and_close_in_bfloat16():
    x0, _, t, x_t, model_x0, var_interp = _vlb_batch()
    full = VLB(BASE, x0, x_t, t, model_x0, var_interp)
    inputs = [a.astype(jnp.bfloat16) for a in (x0, x_t, model_x0, var_interp)]
    half = VLB(BASE, inputs[0], inputs[1], t, inputs[2], inputs[3])
    assert half.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(half)))
    # Only the inputs' rounding (2^-8 relative) differs: the arithmetic is float32 either way.
    upcast = [a.astype(jnp.float32) for a in inputs]
    np.testing.assert_array_equal(half, VLB(BASE, upcast[0], upcast[1], t, upcast[2], upcast[3]))
    np.testing.assert_allclose(half, full, rtol=0.05, atol=1e-3)


def test_hybrid_loss():
    x0, noise, t, _, _, var_interp = _vlb_batch()
    prediction = objectives.target("v", x0, noise, t, BASE) + 0.1

    def total(prediction, var_interp, vlb_weight):
        return jnp.sum(HYBRID("v", prediction, var_interp, x0, noise, t, BASE, vlb_weight))

    simple = jax.jit(objectives.diffusion_loss, static_argnums=0)("v", prediction, x0, noise, t, BASE)
    np.testing.assert_array_equal(HYBRID("v", prediction, var_interp, x0, noise, t, BASE, 0.0), simple)
    hybrid = HYBRID("v", prediction, var_interp, x0, noise, t, BASE, 0.001)
    assert bool(jnp.all(hybrid >= simple)) and bool(jnp.all(hybrid[:12] > simple[:12]))
    # L_vlb trains the variance only: the mean's gradient is that of L_simple.
    grad_pred, grad_var = jax.jit(jax.grad(total, argnums=(0, 1)))(prediction, var_interp, 0.001)
    grad_simple = jax.jit(jax.grad(total))(prediction, var_interp, 0.0)
    np.testing.assert_allclose(grad_pred, grad_simple, rtol=1e-6)
    assert bool(jnp.all(jnp.isfinite(grad_var))) and float(jnp.max(jnp.abs(grad_var))) > 0.0
    in_bf16 = [a.astype(jnp.bfloat16) for a in (prediction, var_interp, x0, noise)]
    assert bool(jnp.all(jnp.isfinite(HYBRID("v", *in_bf16, t, BASE, 0.001))))


# ---------------------------------------------------------------- samplers

NUM_SAMPLES = 8192
SPACED = schedules.respace(BASE, 64)

# Over 8192 samples the standard error of a mean is sigma / 90 and that of a variance ratio
# sqrt(2 / 8192) = 1.6%; tolerances are 4.5 standard errors plus each sampler's discretisation
# bias at 64 cosine steps, measured with 400k samples (DDPM, DDIM eta=1: 6-10% low; the exact
# mean with the posterior variance under-disperses) or exactly through the affine map (DDIM
# eta=0: 4-5% low, first order; DPM-Solver++(2M): 0-2% high). The biases shrink with more steps:
# test_deterministic_samplers_converge checks the rates.
MEAN_TOL = 0.05
VAR_TOL = 0.07
SAMPLERS = {
    "ddpm": (samplers.ddpm_sample, {}, 0.10),
    "ddim_eta0": (samplers.ddim_sample, {"eta": 0.0}, 0.05),
    "ddim_eta1": (samplers.ddim_sample, {"eta": 1.0}, 0.10),
    "dpm_solver_pp_2m": (samplers.dpm_solver_pp_2m_sample, {}, 0.02),
}


@pytest.mark.parametrize(
    "name,objective", [("ddpm", "eps"), ("ddim_eta0", "x0"), ("ddim_eta1", "v"), ("dpm_solver_pp_2m", "v")]
)
def test_sampler_recovers_gaussian_and_compiles_once(name, objective):
    sample, kwargs, bias = SAMPLERS[name]
    calls = []
    model_fn = gaussian_denoiser(objective, calls)
    run = jax.jit(lambda rng: sample(model_fn, SPACED, (NUM_SAMPLES, DIM), rng, objective, **kwargs))
    x = np.asarray(run(jax.random.key(0)))
    traces = len(calls)
    assert 1 <= traces <= 2  # one loop body, not one call per step
    assert not np.array_equal(x, run(jax.random.key(1)))
    assert len(calls) == traces  # the second rng reused the compiled program
    mean_error = np.abs(x.mean(0) - MU) / SIGMA
    var_ratio = x.var(0) / SIGMA**2
    assert np.max(mean_error) < MEAN_TOL, mean_error
    assert np.max(np.abs(var_ratio - 1)) < VAR_TOL + bias, var_ratio


def _exact_output_variance(sample, num_steps, objective):
    """Deterministic samplers are affine in x_T for Gaussian data: out = A x_T + b, Var = A^2."""
    x_T = jnp.stack([jnp.zeros(DIM), jnp.ones(DIM)])
    out = jax.jit(lambda: sample(gaussian_denoiser(objective), schedules.respace(BASE, num_steps), None, None,
                                 objective, x_T=x_T))()
    np.testing.assert_allclose(out[0], MU, atol=2e-3)  # b = E[out] is the data mean
    return np.max(np.abs((out[1] - out[0]) ** 2 / SIGMA**2 - 1))


def test_deterministic_samplers_converge():
    ddim = [_exact_output_variance(samplers.ddim_sample, n, "eps") for n in (64, 128)]
    dpm = [_exact_output_variance(samplers.dpm_solver_pp_2m_sample, n, "x0") for n in (64, 128)]
    assert 1.7 < ddim[0] / ddim[1] < 2.3, ddim  # first order: twice the steps, half the error
    assert dpm[0] / dpm[1] > 3.2 and dpm[1] < 0.01, dpm  # second order: a quarter


def test_ddpm_is_ddim_eta1_and_learned_variance_interpolates():
    schedule = schedules.respace(BASE, 16)
    model_fn = gaussian_denoiser("eps")
    rng, x_T = jax.random.key(5), jax.random.normal(jax.random.key(6), (32, DIM))
    ddpm = jax.jit(lambda f: samplers.ddpm_sample(f, schedule, None, rng, "eps", x_T=x_T), static_argnums=0)
    fixed = ddpm(model_fn)
    ddim = jax.jit(lambda: samplers.ddim_sample(model_fn, schedule, None, rng, "eps", eta=1.0, x_T=x_T))()
    np.testing.assert_allclose(fixed, ddim, atol=1e-4)

    def learned(value):
        return lambda x, t: (model_fn(x, t), jnp.full_like(x, value))

    np.testing.assert_allclose(ddpm(learned(-1.0)), fixed, atol=1e-5)  # -1: the posterior variance
    assert float(jnp.std(ddpm(learned(1.0)))) > float(jnp.std(fixed))  # +1: beta_t, larger


def test_ddim_inversion_reconstructs():
    x0 = MU + SIGMA * jax.random.normal(jax.random.key(7), (256, DIM))
    model_fn = gaussian_denoiser("v")

    def round_trip(num_steps, refine_steps):
        schedule = schedules.respace(BASE, num_steps)
        x_T = jax.jit(lambda: samplers.ddim_invert(model_fn, schedule, x0, "v", refine_steps))()
        np.testing.assert_allclose(jnp.std(x_T), 1.0, atol=0.1)  # it is noise
        x = jax.jit(lambda: samplers.ddim_sample(model_fn, schedule, None, None, "v", x_T=x_T))()
        return float(jnp.max(jnp.abs(x - x0)))

    # Plain inversion is first order: max error 0.12 at 100 steps, 0.06 at 200. Two fixed-point
    # refinements per step bring 100 steps to 0.004 (data std 0.5-1.5).
    plain = [round_trip(100, 0), round_trip(200, 0)]
    assert plain[0] < 0.15 and 1.7 < plain[0] / plain[1] < 2.3, plain
    assert round_trip(100, 2) < 1e-2


def test_image_inversion_round_trips_through_the_guided_sampler():
    """`ImageDiffusion.invert` inverts the very step `sample` takes (guidance, x0 clipping), so the
    guided DDIM round trip comes back; inverting the conditional model alone, then sampling with
    guidance (what the pipeline did before), does not."""
    from dalle2_jax.stages import image_diffusion

    diffusion = image_diffusion.ImageDiffusion(image_diffusion.diffusion_config("x0"),
                                               image_diffusion.sampling_config(num_steps=50, guidance_scale=2.0))
    shift = jnp.asarray([0.3, -0.2, 0.1])

    def cond_model_fn(x_t, t, use_condition):  # x0 of N(+-shift, 0.3^2) pixels, the sign by condition
        a = BASE.sqrt_alphas_cumprod[t][:, None, None, None]
        s = BASE.sqrt_one_minus_alphas_cumprod[t][:, None, None, None]
        mean = jnp.where(use_condition[:, None, None, None], shift, -shift)
        return mean + a * 0.09 * (x_t - a * mean) / (a**2 * 0.09 + s**2)

    x0 = jnp.clip(shift + 0.3 * jax.random.normal(jax.random.key(3), (4, 8, 8, 3)), -1, 1)

    def round_trip(inversion_sampling):
        x_T = jax.jit(lambda: diffusion.invert(cond_model_fn, x0, inversion_sampling, refine_steps=2))()
        x = jax.jit(lambda: diffusion.sample(cond_model_fn, x0.shape, jax.random.key(0), x_T=x_T))()
        return float(jnp.max(jnp.abs(x - x0)))

    assert round_trip(None) < 0.02  # the config's sampling: guidance 2, as `sample` uses
    assert round_trip(image_diffusion.sampling_config(num_steps=50, guidance_scale=1.0)) > 0.1


def test_initial_noise_is_used_and_validated():
    model_fn = gaussian_denoiser("x0")
    x_T = jax.random.normal(jax.random.key(8), (4, DIM))
    run = functools.partial(samplers.dpm_solver_pp_2m_sample, model_fn, schedules.respace(BASE, 8))
    np.testing.assert_array_equal(run(None, None, "x0", x_T=x_T), run((4, DIM), jax.random.key(0), "x0", x_T=x_T))
    assert not np.allclose(run(None, None, "x0", x_T=x_T), run(None, None, "x0", x_T=-x_T))
    with pytest.raises(ValueError, match="shape"):
        run((5, DIM), None, "x0", x_T=x_T)
    with pytest.raises(ValueError, match="rng"):
        samplers.ddim_sample(model_fn, SPACED, None, None, "x0", eta=0.5, x_T=x_T)
    with pytest.raises(ValueError, match="'score'"):
        samplers.ddpm_sample(model_fn, SPACED, (4, DIM), jax.random.key(0), "score")


# ---------------------------------------------------------------- classifier-free guidance


def _conditional_model(calls):
    """eps = 2 x with the condition, -x without; a learned-variance output of 0.5 / -0.5."""

    def cond_model_fn(x, t, use_condition):
        calls.append(x.shape)
        factor = jnp.where(use_condition, 2.0, -1.0)[:, None]
        return factor * x, jnp.broadcast_to(factor / 4.0, x.shape)

    return cond_model_fn


def test_classifier_free_guidance():
    calls = []
    x, t = jax.random.normal(jax.random.key(0), (3, DIM)), jnp.full((3,), 7)
    for scale, expected in [(1.0, 2 * x), (0.0, -x), (3.0, -x + 3 * (3 * x))]:
        prediction, var_interp = samplers.classifier_free_guidance(_conditional_model(calls), scale)(x, t)
        np.testing.assert_allclose(prediction, expected, rtol=1e-6)
        np.testing.assert_allclose(var_interp, 0.5)  # the conditional variance, unguided
    assert calls == [(6, DIM)] * 3  # one call per step, on the doubled batch

    calls.clear()
    guided = samplers.classifier_free_guidance(_conditional_model(calls), 4.0)
    run = jax.jit(lambda rng: samplers.ddpm_sample(guided, SPACED, (3, DIM), rng, "eps"))
    run(jax.random.key(0))
    run(jax.random.key(1))
    assert calls == [(6, DIM)]  # traced once for 64 steps, and not again
