"""Conditioning augmentations of the upsamplers (`dalle2_jax.data.degrade`), on tiny images."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dalle2_jax.data import degrade as dg


def _images(seed: int = 0, shape=(2, 16, 16, 3), amplitude: float = 1.0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), shape, minval=-amplitude, maxval=amplitude)


# ---------------------------------------------------------------------------------------------- blur


@pytest.mark.parametrize("sigma", [0.0, 1e-8])
def test_blur_with_zero_sigma_is_identity(sigma):
    x = _images()
    np.testing.assert_array_equal(dg.gaussian_blur(x, sigma, kernel_size=5), x)


def test_blur_keeps_constant_image_and_roughly_the_mean():
    const = jnp.full((2, 16, 16, 3), 0.3)
    np.testing.assert_allclose(dg.gaussian_blur(const, 1.2, kernel_size=7), const, atol=1e-6)
    x = _images()
    y = dg.gaussian_blur(x, 1.0, kernel_size=5)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_allclose(y.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=0.02)
    assert float(jnp.std(y)) < float(jnp.std(x))  # it does smooth


def test_blur_of_impulse_is_the_normalised_kernel():
    x = np.zeros((1, 9, 9, 1), np.float32)
    x[0, 4, 4, 0] = 1.0
    sigma, k = 1.0, 5
    t = np.exp(-((np.arange(k) - 2.0) ** 2) / (2 * sigma**2))
    t /= t.sum()
    expected = np.zeros((9, 9), np.float32)
    expected[2:7, 2:7] = np.outer(t, t)
    y = dg.gaussian_blur(jnp.asarray(x), sigma, kernel_size=k)
    np.testing.assert_allclose(y[0, :, :, 0], expected, atol=1e-6)
    np.testing.assert_allclose(float(y.sum()), 1.0, atol=1e-6)


def test_blur_with_per_example_sigma():
    x = _images()
    y = dg.gaussian_blur(x, jnp.array([0.0, 1.0]), kernel_size=5)
    np.testing.assert_array_equal(y[0], x[0])
    np.testing.assert_allclose(y[1:], dg.gaussian_blur(x[1:], 1.0, kernel_size=5), atol=1e-6)


def test_blur_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        dg.gaussian_blur(_images(), 0.6, kernel_size=4)


def test_blur_degradation_fixed_and_random_sigma():
    x = _images()
    rng = jax.random.key(3)
    fixed = dg.blur_degradation(rng, x, random_sigma=False)
    np.testing.assert_allclose(fixed, dg.gaussian_blur(x, 0.6, 3), atol=1e-6)
    rand = dg.blur_degradation(rng, x)
    np.testing.assert_array_equal(rand, dg.blur_degradation(rng, x))
    assert not np.allclose(rand, x) and not np.allclose(rand, fixed)


# ----------------------------------------------------------------------------------- resizing


def test_downsample_shape_and_range():
    x = _images()
    y = dg.downsample(x, 8)
    assert y.shape == (2, 8, 8, 3) and y.dtype == jnp.float32
    assert float(y.min()) >= -1.0 and float(y.max()) <= 1.0
    assert dg.downsample(x, (4, 8), method="linear").shape == (2, 4, 8, 3)


@pytest.mark.parametrize("method", ["linear", "cubic"])
def test_rescale_matches_down_then_up_resize(method):
    x = _images()
    np.testing.assert_allclose(dg.rescale(x, 1.0, method), x, atol=1e-6)
    reference = jax.image.resize(jax.image.resize(x, (2, 8, 8, 3), method), (2, 16, 16, 3), method)
    np.testing.assert_allclose(dg.rescale(x, 0.5, method), reference, atol=1e-5)
    per_example = dg.rescale(x, jnp.array([1.0, 0.5]), method)
    np.testing.assert_allclose(per_example[0], x[0], atol=1e-6)
    np.testing.assert_allclose(per_example[1], reference[1], atol=1e-5)


# --------------------------------------------------------------------------------------- JPEG


def test_jpeg_quality_100_is_near_identity():
    x = _images()
    y = dg.jpeg_compress(x, 100.0)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(jnp.abs(y - x).mean()) < 0.004  # ~ half a grey level
    assert float(jnp.abs(y - x).max()) < 0.03


def test_jpeg_low_quality_changes_image_keeps_range_and_block_means():
    x = _images(1, amplitude=0.3)
    quality = 25.0
    y = dg.jpeg_compress(x, quality)
    assert float(jnp.abs(y - x).mean()) > 0.02
    assert float(y.min()) >= -1.0 and float(y.max()) <= 1.0
    # Each 8x8 block mean only moves by the DC quantisation error: at most step / 16 grey levels per
    # YCbCr plane, mapped back to RGB.
    luma_dc = float(dg.jpeg_quantisation_table(quality)[0, 0])
    chroma_dc = float(dg.jpeg_quantisation_table(quality, dg._JPEG_CHROMA)[0, 0])
    bound = (luma_dc + np.abs(dg._YCBCR_TO_RGB[:, 1:]).sum(axis=1).max() * chroma_dc) / 16 / 127.5
    block_means = lambda a: np.asarray(a).reshape(2, 2, 8, 2, 8, 3).mean(axis=(2, 4))  # noqa: E731
    diff = np.abs(block_means(y) - block_means(x))
    assert diff.max() <= bound + 1e-5, (diff.max(), bound)


def test_jpeg_per_channel_odd_size_and_per_example_quality():
    x = _images(2, shape=(2, 12, 10, 1))
    y = dg.jpeg_compress(x, jnp.array([100.0, 10.0]))
    assert y.shape == x.shape
    assert float(jnp.abs(y[0] - x[0]).max()) < 0.01
    assert float(jnp.abs(y[1] - x[1]).mean()) > 0.05


# ---------------------------------------------------------------------------------------- BSR


def test_bsr_shape_range_and_determinism():
    x = _images()
    a = dg.bsr_degradation(jax.random.key(0), x)
    assert a.shape == x.shape and a.dtype == jnp.float32
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    np.testing.assert_array_equal(a, dg.bsr_degradation(jax.random.key(0), x))
    assert not np.allclose(a, dg.bsr_degradation(jax.random.key(1), x))


def test_bsr_with_all_steps_always_on_changes_every_example():
    x = _images()
    probs = dict(blur_prob=1.0, rescale_prob=1.0, noise_prob=1.0, jpeg_prob=1.0)
    y = dg.bsr_degradation(jax.random.key(0), x, shuffle=False, **probs)
    assert float(jnp.abs(y - x).mean(axis=(1, 2, 3)).min()) > 0.02
    off = dict(blur_prob=0.0, rescale_prob=0.0, noise_prob=0.0, jpeg_prob=0.0)
    np.testing.assert_array_equal(dg.bsr_degradation(jax.random.key(0), x, **off), x)


def test_bsr_rejects_bad_options():
    with pytest.raises(ValueError, match="jpeg_quality_range"):
        dg.bsr_degradation(jax.random.key(0), _images(), jpeg_quality_range=(30, 120))


@pytest.mark.parametrize("name", ["blur", "bsr"])
def test_degradations_work_under_jit(name):
    x = _images()
    rng = jax.random.key(7)
    jitted = jax.jit(functools.partial(dg.degrade, name))
    np.testing.assert_allclose(jitted(rng, x), dg.degrade(name, rng, x), atol=1e-5)


# ------------------------------------------------------------------------------------ registry


def test_degrade_registry_and_unknown_name():
    x = _images()
    rng = jax.random.key(0)
    assert set(dg.DEGRADATIONS) == {"none", "blur", "bsr"}
    np.testing.assert_array_equal(dg.degrade("none", rng, x), x)
    np.testing.assert_array_equal(dg.degrade("blur", rng, x, sigma=0.5), dg.blur_degradation(rng, x, sigma=0.5))
    with pytest.raises(ValueError, match=r"'sharpen'.*blur.*bsr.*none"):
        dg.degrade("sharpen", rng, x)
