"""Conditioning augmentations of the unCLIP upsamplers (Ramesh et al. 2022, sec. 2.1 and appendix C).

unCLIP trains its two diffusion upsamplers (64 -> 256 and 256 -> 1024) on a downsampled copy of the
target image, and "slightly corrupt[s] the conditioning image during training": Gaussian blur for
the first upsampling stage and "a more diverse BSR degradation" (Zhang et al. 2021, "Designing a
Practical Degradation Model for Deep Blind Image Super-Resolution") for the second. The corruption
makes an upsampler robust to the imperfect low-resolution samples it is given at inference time.

Everything here is pure JAX, jittable, and works on a batch of float32 images [B, H, W, C] in
[-1, 1]. Randomness comes from one `jax.random` key; every random choice (apply a step or not, its
strength) is drawn independently per example, so the functions can run inside a jitted,
batch-sharded train step with a replicated key. The degradations are applied to the *low-res*
conditioning image (after `downsample`), and keep its shape:

    low = downsample(images, 64)
    cond = degrade("blur", rng, low)   # or "bsr", or "none"

Building blocks: `gaussian_blur`, `downsample`, `rescale` (down-then-up, size kept),
`jpeg_compress` (8x8 block DCT with quantisation by a JPEG table scaled by quality).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Degradation = Callable[..., Array]

_HIGHEST = lax.Precision.HIGHEST

# JPEG standard (ITU T.81, annex K) quantisation tables for luma and chroma, at quality 50.
_JPEG_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.float32,
)
_JPEG_CHROMA = np.full((8, 8), 99, dtype=np.float32)
_JPEG_CHROMA[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]

# JFIF full-range RGB -> YCbCr (without the +128 offset of Cb and Cr), and its inverse.
_RGB_TO_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float64
)
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR)


def _dct_matrix(n: int = 8) -> np.ndarray:
    """Orthonormal DCT-II matrix D[u, x]; JPEG's 8x8 DCT is D @ block @ D.T."""
    x = np.arange(n)
    d = np.cos((2 * x[None, :] + 1) * x[:, None] * np.pi / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


_DCT8 = _dct_matrix(8)


def _per_example(value: float | Array, batch: int) -> Array:
    """A scalar or [B] value as a float32 [B] array."""
    return jnp.broadcast_to(jnp.asarray(value, jnp.float32), (batch,))


def _check_images(images: Array) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {tuple(images.shape)}")


def _check_range(name: str, value: tuple[float, float], low: float, high: float) -> None:
    lo, hi = value
    if not low <= lo <= hi <= high:
        raise ValueError(f"{name} must be (lo, hi) with {low} <= lo <= hi <= {high}, got {value}")


# --------------------------------------------------------------------------------------------------
# Building blocks (deterministic given their parameters)
# --------------------------------------------------------------------------------------------------


def gaussian_kernel1d(sigma: float | Array, kernel_size: int = 3) -> Array:
    """Normalised 1-D Gaussian taps [..., kernel_size] for a scalar or batched `sigma`.

    Sigma 0 (or tiny) gives the unit impulse, i.e. the identity filter.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    sigma = jnp.maximum(jnp.asarray(sigma, jnp.float32), 1e-6)[..., None]
    x = jnp.arange(kernel_size, dtype=jnp.float32) - (kernel_size - 1) / 2
    taps = jnp.exp(-(x**2) / (2 * sigma**2))
    return taps / jnp.sum(taps, axis=-1, keepdims=True)


def _filter_axis(images: Array, taps: Array, axis: int) -> Array:
    """Per-example 1-D correlation of [B, H, W, C] images with taps [B, k] along `axis` (1 or 2)."""
    k = taps.shape[-1]
    n = images.shape[axis]
    pad = k // 2
    widths = [(0, 0)] * 4
    widths[axis] = (pad, pad)
    # "reflect" (mirror without repeating the edge) needs pad < n; tiny images fall back to "edge".
    padded = jnp.pad(images, widths, mode="reflect" if pad < n else "edge")
    out = jnp.zeros_like(images)
    for i in range(k):  # k is small and static: a sum of shifted copies, cheap and sharding-friendly
        window = lax.slice_in_dim(padded, i, i + n, axis=axis)
        out = out + taps[:, i, None, None, None] * window
    return out


def gaussian_blur(images: Array, sigma: float | Array, kernel_size: int = 3) -> Array:
    """Separable Gaussian blur of [B, H, W, C] images, size kept (reflect padding).

    `sigma` is a scalar or a [B] array (one sigma per example); sigma 0 is the identity.
    """
    _check_images(images)
    dtype = images.dtype
    x = images.astype(jnp.float32)
    taps = gaussian_kernel1d(_per_example(sigma, x.shape[0]), kernel_size)
    x = _filter_axis(x, taps, axis=1)
    x = _filter_axis(x, taps, axis=2)
    return x.astype(dtype)


def downsample(images: Array, size: int | tuple[int, int], method: str = "cubic", antialias: bool = True) -> Array:
    """Antialiased resize to [B, size, size, C] (or [B, h, w, C]): the upsampler's conditioning image.

    Cubic resampling can overshoot, so the result is clipped back to [-1, 1].
    """
    _check_images(images)
    h, w = (size, size) if isinstance(size, int) else size
    b, _, _, c = images.shape
    out = jax.image.resize(images.astype(jnp.float32), (b, h, w, c), method=method, antialias=antialias)
    return jnp.clip(out, -1.0, 1.0).astype(images.dtype)


def rescale(images: Array, factor: float | Array, method: str = "linear") -> Array:
    """Downscale by `factor` (scalar or [B], in (0, 1]) with antialiasing, then upscale back; size kept.

    Works with a traced, per-example factor: the small image lives in the top-left corner of a
    full-size buffer, and the upscale is normalised by the upscaled validity mask, which equals
    resizing only the valid region (`jax.image.scale_and_translate` zero-fills outside the input).
    Not clipped (cubic can overshoot [-1, 1] slightly).
    """
    _check_images(images)
    dtype = images.dtype
    b, h, w, c = images.shape
    factor = _per_example(factor, b)
    zero = jnp.zeros(2, jnp.float32)

    def one(image: Array, f: Array) -> Array:
        scale = jnp.stack([f, f])
        ones = jnp.ones((h, w, 1), jnp.float32)
        small = jax.image.scale_and_translate(image, (h, w, c), (0, 1), scale, zero, method, antialias=True)
        valid = jax.image.scale_and_translate(ones, (h, w, 1), (0, 1), scale, zero, method, antialias=True)
        up = jax.image.scale_and_translate(small, (h, w, c), (0, 1), 1.0 / scale, zero, method, antialias=False)
        norm = jax.image.scale_and_translate(valid, (h, w, 1), (0, 1), 1.0 / scale, zero, method, antialias=False)
        return up / jnp.where(jnp.abs(norm) > 1e-6, norm, 1.0)

    return jax.vmap(one)(images.astype(jnp.float32), factor).astype(dtype)


def jpeg_quantisation_table(quality: float | Array, base: np.ndarray = _JPEG_LUMA) -> Array:
    """IJG scaling of a base (quality-50) table: [..., 8, 8] steps in [1, 255] for quality in [1, 100]."""
    q = jnp.clip(jnp.asarray(quality, jnp.float32), 1.0, 100.0)[..., None, None]
    scale = jnp.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    return jnp.clip(jnp.floor((base * scale + 50.0) / 100.0), 1.0, 255.0)


def jpeg_compress(images: Array, quality: float | Array, ycbcr: bool = True) -> Array:
    """JPEG-like compression artefacts: 8x8 block DCT, quantise by a quality-scaled table, inverse DCT.

    `quality` is a scalar or [B] in [1, 100] (IJG convention). With `ycbcr` and 3 channels the image
    is coded as JFIF YCbCr (luma table on Y, chroma table on Cb/Cr, no chroma subsampling);
    otherwise every channel is coded with the luma table. Sides that are not multiples of 8 are
    edge-padded and cropped back. No entropy coding and no rounding to 8 bits, so quality 100
    (all steps 1) is near-identity; the DC step bounds how far each 8x8 block mean can move.
    Output clipped to [-1, 1].
    """
    _check_images(images)
    dtype = images.dtype
    b, h, w, c = images.shape
    x = (images.astype(jnp.float32) + 1.0) * 127.5 - 128.0  # [0, 255] pixels, JPEG level shift
    use_ycbcr = ycbcr and c == 3
    if use_ycbcr:
        x = jnp.einsum("bhwc,dc->bhwd", x, jnp.asarray(_RGB_TO_YCBCR, jnp.float32), precision=_HIGHEST)
        tables = jnp.stack(
            [jpeg_quantisation_table(_per_example(quality, b), t) for t in (_JPEG_LUMA, _JPEG_CHROMA, _JPEG_CHROMA)],
            axis=-1,
        )  # [B, 8, 8, 3]
    else:
        tables = jpeg_quantisation_table(_per_example(quality, b))[..., None]  # [B, 8, 8, 1]
    ph, pw = -h % 8, -w % 8
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    nh, nw = x.shape[1] // 8, x.shape[2] // 8
    blocks = x.reshape(b, nh, 8, nw, 8, c)
    d = jnp.asarray(_DCT8)
    coef = jnp.einsum("ux,vy,bixjyc->biujvc", d, d, blocks, precision=_HIGHEST)
    steps = tables[:, None, :, None, :, :]  # [B, 1, 8, 1, 8, C or 1]
    coef = jnp.round(coef / steps) * steps
    blocks = jnp.einsum("ux,vy,biujvc->bixjyc", d, d, coef, precision=_HIGHEST)
    x = blocks.reshape(b, nh * 8, nw * 8, c)[:, :h, :w, :]
    if use_ycbcr:
        x = jnp.einsum("bhwc,dc->bhwd", x, jnp.asarray(_YCBCR_TO_RGB, jnp.float32), precision=_HIGHEST)
    x = (x + 128.0) / 127.5 - 1.0
    return jnp.clip(x, -1.0, 1.0).astype(dtype)


# --------------------------------------------------------------------------------------------------
# Random degradations: (rng, images, **options) -> images of the same shape and dtype
# --------------------------------------------------------------------------------------------------


def no_degradation(rng: Array, images: Array) -> Array:
    """The identity (no conditioning augmentation)."""
    del rng
    return images


def blur_degradation(
    rng: Array, images: Array, kernel_size: int = 3, sigma: float = 0.6, random_sigma: bool = True
) -> Array:
    """First upsampler stage (64 -> 256): Gaussian blur, kernel 3, sigma up to 0.6 (unCLIP appendix C).

    Decision: with `random_sigma` (the default) each example gets sigma ~ U(0, sigma). The paper
    gives the blur as an upper strength, and a fixed blur would train the upsampler only on
    uniformly soft inputs, whereas at sampling time it is fed the base model's samples whose
    sharpness varies. A range that reaches sigma ~ 0 (for sigma < ~0.3 a 3-tap kernel is
    practically the identity) keeps clean inputs in distribution too, much like the 50%
    probability of blurring in Cascaded Diffusion Models (Ho et al. 2021), which unCLIP cites.
    Pass `random_sigma=False` for a fixed sigma.
    """
    _check_images(images)
    b = images.shape[0]
    sigmas = jax.random.uniform(rng, (b,), minval=0.0, maxval=sigma) if random_sigma else _per_example(sigma, b)
    return gaussian_blur(images, sigmas, kernel_size)


def bsr_degradation(
    rng: Array,
    images: Array,
    *,
    blur_prob: float = 0.5,
    blur_sigma_range: tuple[float, float] = (0.2, 1.5),
    blur_kernel_size: int = 7,
    rescale_prob: float = 0.5,
    rescale_range: tuple[float, float] = (0.5, 1.0),
    rescale_methods: Sequence[str] = ("linear", "cubic"),
    noise_prob: float = 0.5,
    noise_std_range: tuple[float, float] = (2 * 2 / 255, 2 * 25 / 255),
    gray_noise_prob: float = 0.4,
    jpeg_prob: float = 0.5,
    jpeg_quality_range: tuple[float, float] = (30, 95),
    shuffle: bool = True,
) -> Array:
    """Second upsampler stage (256 -> 1024): a BSR-style (Zhang et al. 2021) chain on the low-res image.

    Steps, each applied to an example with its own probability and a per-example random strength
    (defaults follow BSR's ranges, rescaled to [-1, 1] pixels and to a low-res input):
      * blur: isotropic Gaussian, sigma ~ U(blur_sigma_range), `blur_kernel_size` taps (BSR also
        uses anisotropic kernels; not here);
      * rescale: down by factor ~ U(rescale_range) then back up (`rescale`), method picked uniformly
        from `rescale_methods` (BSR's nearest has no `scale_and_translate` kernel, so not offered);
      * noise: additive Gaussian, std ~ U(noise_std_range) (BSR's 2..25 of 255, times 2 for
        [-1, 1]), the same noise on all channels ("gray" noise) with `gray_noise_prob`;
      * JPEG: `jpeg_compress` with quality ~ U{jpeg_quality_range} (BSR's 30..95).

    Order: with `shuffle` the first three steps run in a random order, drawn once per call (per
    batch) via `lax.switch`, so only one branch runs per slot; a per-example order would evaluate
    every step in every slot under vmap (3x the work). JPEG always runs last, as in BSR, whose
    pipeline ends with JPEG compression. The result is clipped to [-1, 1].
    """
    _check_images(images)
    probs = {"blur_prob": blur_prob, "rescale_prob": rescale_prob, "noise_prob": noise_prob}
    probs.update(gray_noise_prob=gray_noise_prob, jpeg_prob=jpeg_prob)
    for name, p in probs.items():
        _check_range(name, (p, p), 0.0, 1.0)
    _check_range("blur_sigma_range", blur_sigma_range, 0.0, float("inf"))
    _check_range("rescale_range", rescale_range, 1e-3, 1.0)
    _check_range("noise_std_range", noise_std_range, 0.0, float("inf"))
    _check_range("jpeg_quality_range", jpeg_quality_range, 1, 100)
    if not rescale_methods:
        raise ValueError("rescale_methods must name at least one resize method")

    dtype = images.dtype
    x = images.astype(jnp.float32)
    b = x.shape[0]
    k_order, k_blur, k_rescale, k_noise, k_jpeg = jax.random.split(rng, 5)

    def gated(key: Array, prob: float, before: Array, after: Array) -> Array:
        apply = jax.random.bernoulli(key, prob, (b,))
        return jnp.where(apply[:, None, None, None], after, before)

    def blur(y: Array) -> Array:
        k_apply, k_sigma = jax.random.split(k_blur)
        sigma = jax.random.uniform(k_sigma, (b,), minval=blur_sigma_range[0], maxval=blur_sigma_range[1])
        return gated(k_apply, blur_prob, y, gaussian_blur(y, sigma, blur_kernel_size))

    def resize(y: Array) -> Array:
        k_apply, k_factor, k_method = jax.random.split(k_rescale, 3)
        factor = jax.random.uniform(k_factor, (b,), minval=rescale_range[0], maxval=rescale_range[1])
        choice = jax.random.randint(k_method, (b,), 0, len(rescale_methods))
        out = rescale(y, factor, rescale_methods[0])
        for i, method in enumerate(rescale_methods[1:], start=1):
            out = jnp.where((choice == i)[:, None, None, None], rescale(y, factor, method), out)
        return gated(k_apply, rescale_prob, y, out)

    def noise(y: Array) -> Array:
        k_apply, k_std, k_gray, k_eps = jax.random.split(k_noise, 4)
        std = jax.random.uniform(k_std, (b,), minval=noise_std_range[0], maxval=noise_std_range[1])
        eps = jax.random.normal(k_eps, y.shape, jnp.float32)
        gray = jax.random.bernoulli(k_gray, gray_noise_prob, (b,))
        eps = jnp.where(gray[:, None, None, None], eps[..., :1], eps)
        return gated(k_apply, noise_prob, y, y + std[:, None, None, None] * eps)

    def jpeg(y: Array) -> Array:
        k_apply, k_quality = jax.random.split(k_jpeg)
        lo, hi = int(jpeg_quality_range[0]), int(jpeg_quality_range[1])
        quality = jax.random.randint(k_quality, (b,), lo, hi + 1).astype(jnp.float32)
        # JPEG codes 8-bit pixels: clip first so that earlier noise does not leak outside the range.
        return gated(k_apply, jpeg_prob, y, jpeg_compress(jnp.clip(y, -1.0, 1.0), quality))

    steps = (blur, resize, noise)
    if shuffle:
        order = jax.random.permutation(k_order, len(steps))
        for slot in range(len(steps)):
            x = lax.switch(order[slot], steps, x)
    else:
        for step in steps:
            x = step(x)
    x = jpeg(x)
    return jnp.clip(x, -1.0, 1.0).astype(dtype)


DEGRADATIONS: dict[str, Degradation] = {
    "none": no_degradation,
    "blur": blur_degradation,
    "bsr": bsr_degradation,
}


def degrade(name: str, rng: Array, images: Array, **kwargs: object) -> Array:
    """Apply the named conditioning degradation (`DEGRADATIONS`); keyword options go to it."""
    try:
        fn = DEGRADATIONS[name]
    except KeyError:
        raise ValueError(f"unknown degradation {name!r}; choose one of {sorted(DEGRADATIONS)}") from None
    return fn(rng, images, **kwargs)
