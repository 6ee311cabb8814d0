"""Tests of the pixel-rule attribute evaluator for the built-in `shapes` dataset."""

import itertools

import numpy as np
import pytest

from dalle2_jax.data import shapes
from dalle2_jax.evaluation import shapes_attributes as sa

ALL_PAIRS = tuple(itertools.product(shapes.COLORS, shapes.SHAPES))  # held-out pairs included
PERFECT = {name: 1.0 for name in (*shapes.ATTRIBUTE_NAMES, "all")}


def _renders(n: int, resolution: int, seed: int) -> tuple[np.ndarray, list[dict[str, str]], np.ndarray]:
    """n random examples over every (color, shape) pair: images, attributes, centers."""
    rng = np.random.default_rng(seed)
    drawn = [shapes.sample_attributes_and_center(rng, ALL_PAIRS) for _ in range(n)]
    images = np.stack([shapes.render(attrs, center, resolution) for attrs, center in drawn])
    return images, [attrs for attrs, _ in drawn], np.asarray([center for _, center in drawn])


def _degrade(images: np.ndarray, seed: int, noise_std: float, blur: str | None) -> np.ndarray:
    """Blur (3x3 box, or 3-tap Gaussian of sigma 0.6, edges replicated), add Gaussian noise, requantise."""
    x = images.astype(np.float64)
    if blur is not None:
        taps = np.ones(3) if blur == "box" else np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * 0.6**2))
        taps /= taps.sum()
        for axis in (1, 2):
            padded = np.pad(x, [(1, 1) if a == axis else (0, 0) for a in range(4)], mode="edge")
            x = sum(t * np.take(padded, np.arange(k, k + x.shape[axis]), axis=axis) for k, t in enumerate(taps))
    x = x + np.random.default_rng(seed).normal(0.0, noise_std, x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- clean renders


@pytest.mark.parametrize("resolution, n", [(32, 2000), (64, 1000)])
def test_clean_renders_score_perfectly(resolution, n):
    images, targets, centers = _renders(n, resolution, seed=resolution)
    assert sa.score(images, targets) == PERFECT
    predicted = sa.predict(images).centers
    assert np.abs(predicted - centers).max() <= 1 / resolution  # within a pixel of the rendered center


def test_dataset_examples_score_perfectly():
    """Examples as the dataset generates them, train and held-out splits, at 32 and 128 px."""
    for resolution, split in itertools.product((32, 128), ("train", "heldout")):
        examples = [shapes.generate_example(3, split, k, resolution) for k in range(60)]
        targets = [{name: ex[name] for name in shapes.ATTRIBUTE_NAMES} for ex in examples]
        assert sa.score(np.stack([ex["image"] for ex in examples]), targets) == PERFECT


@pytest.mark.parametrize("resolution, n, floor", [(8, 300, 0.7), (16, 1000, 0.98)])
def test_low_resolution_misses_are_exact_ties(resolution, n, floor):
    """At 8 and 16 px some shapes share a mask; every miss renders exactly the image it was given."""
    images, targets, _ = _renders(n, resolution, seed=resolution)
    predictions = sa.predict(images)
    assert sa.score(images, targets)["all"] >= floor
    misses = [k for k in range(n) if predictions.attributes(k) != targets[k]]
    for k in misses:
        attrs = predictions.attributes(k)
        assert attrs["shape"] != targets[k]["shape"]  # only the shape can be ambiguous
        assert np.array_equal(shapes.render(attrs, tuple(predictions.centers[k]), resolution), images[k])


# ----------------------------------------------------------------------------- robustness


@pytest.mark.parametrize(
    "resolution, noise_std, blur, floor",
    [(64, 12.0, "gauss", 0.99), (32, 12.0, "box", 0.99), (64, 25.0, "gauss", 0.98)],
)
def test_noise_and_blur_keep_accuracy_high(resolution, noise_std, blur, floor):
    """Noise of std 12 is an eighth of the smallest background-to-color distance (~100, gray to purple),
    and a 3x3 blur only mixes the boundary pixels, so almost nothing should change (1.0 measured on
    1000 images for each case; 25 is a harsher check)."""
    images, targets, _ = _renders(400, resolution, seed=7)
    accuracy = sa.score(_degrade(images, seed=1, noise_std=noise_std, blur=blur), targets)
    assert min(accuracy.values()) >= floor, accuracy


def test_colors_a_bit_off_palette_are_still_recognised():
    """Object and background shifted by a random RGB offset (std 10 per channel), noise and blur on top."""
    images, targets, _ = _renders(300, 64, seed=11)
    rng = np.random.default_rng(2)
    shifted = images.astype(np.float64)
    for k, attrs in enumerate(targets):
        is_background = np.all(images[k] == shapes.BACKGROUND_RGB[attrs["background"]], axis=-1)
        shifted[k][is_background] += rng.normal(0, 10, 3)
        shifted[k][~is_background] += rng.normal(0, 10, 3)
    degraded = _degrade(np.clip(shifted, 0, 255).astype(np.uint8), seed=3, noise_std=12.0, blur="gauss")
    assert sa.score(degraded, targets)["all"] >= 0.98


# ----------------------------------------------------------------------------- wrong attributes


def test_recoloured_render_is_scored_as_the_new_color():
    attrs = {"background": "gray", "color": "red", "shape": "diamond", "size": "small", "position": "top"}
    image = shapes.render(attrs, (0.52, 0.23), 64)
    object_pixels = np.all(image == shapes.COLOR_RGB["red"], axis=-1)
    for color in shapes.COLORS:
        recoloured = image.copy()
        recoloured[object_pixels] = shapes.COLOR_RGB[color]
        noisy = _degrade(recoloured[None], seed=0, noise_std=12.0, blur="gauss")[0]
        assert sa.predict_attributes(noisy) == {**attrs, "color": color}
    recoloured = image.copy()
    recoloured[object_pixels] = shapes.COLOR_RGB["blue"]
    assert sa.score(recoloured[None], [attrs]) == {**PERFECT, "color": 0.0, "all": 0.0}


@pytest.mark.parametrize("size", shapes.SIZES)
def test_swapped_shape_and_background_change_the_prediction(size):
    base = {"background": "white", "color": "purple", "shape": "circle", "size": size, "position": "right"}
    center = shapes.clip_center((0.78, 0.47), size)
    for shape, background in itertools.product(shapes.SHAPES, shapes.BACKGROUNDS):
        attrs = {**base, "shape": shape, "background": background}
        image = _degrade(shapes.render(attrs, center, 32)[None], seed=5, noise_std=12.0, blur="box")[0]
        assert sa.predict_attributes(image) == attrs


def test_center_follows_the_object_across_anchors():
    attrs = {"background": "black", "color": "yellow", "shape": "triangle", "size": "large"}
    for position, anchor in shapes.POSITION_ANCHOR.items():
        for dx, dy in itertools.product((-0.039, 0.039), repeat=2):
            center = shapes.clip_center((anchor[0] + dx, anchor[1] + dy), "large")
            predictions = sa.predict(shapes.render({**attrs, "position": position}, center, 64)[None])
            assert predictions.attributes(0)["position"] == position
            np.testing.assert_allclose(predictions.centers[0], center, atol=1 / 64)


# ----------------------------------------------------------------------------- score and edge cases


def test_score_arithmetic_on_a_hand_made_batch():
    truth = [
        {"background": "white", "color": "red", "shape": "circle", "size": "small", "position": "center"},
        {"background": "gray", "color": "green", "shape": "square", "size": "large", "position": "left"},
        {"background": "black", "color": "blue", "shape": "triangle", "size": "small", "position": "bottom"},
        {"background": "white", "color": "orange", "shape": "diamond", "size": "large", "position": "top"},
    ]
    images = np.stack([shapes.render(a, shapes.clip_center(shapes.POSITION_ANCHOR[a["position"]], a["size"]), 32)
                       for a in truth])
    targets = [
        truth[0],
        {**truth[1], "color": "yellow"},
        {**truth[2], "color": "red", "shape": "circle"},
        {**truth[3], "position": "bottom"},
    ]
    assert sa.score(images, targets) == {
        "background": 1.0, "color": 0.5, "shape": 0.75, "size": 1.0, "position": 0.75, "all": 0.25,
    }


@pytest.mark.parametrize("resolution", [8, 32, 256])
def test_background_only_and_degenerate_images_do_not_crash(resolution):
    plain = np.stack([np.broadcast_to(np.asarray(rgb, np.uint8), (resolution, resolution, 3))
                      for rgb in shapes.BACKGROUND_RGB.values()])
    noise = np.random.default_rng(0).integers(0, 256, (2, resolution, resolution, 3), dtype=np.uint8)
    uniform_red = np.full((1, resolution, resolution, 3), shapes.COLOR_RGB["red"], np.uint8)
    predictions = sa.predict(np.concatenate([plain, noise, uniform_red]))
    assert [predictions.attributes(k)["background"] for k in range(3)] == list(shapes.BACKGROUNDS)
    for k in range(6):
        attrs = predictions.attributes(k)
        assert all(attrs[name] in shapes.ATTRIBUTE_VALUES[name] for name in shapes.ATTRIBUTE_NAMES)
    assert np.all((predictions.centers >= 0) & (predictions.centers <= 1))
    assert sa.score(plain[:1], [shapes.all_combinations()[0]])["background"] == 1.0


def test_bad_inputs_are_rejected():
    image = shapes.render(shapes.all_combinations()[0], (0.5, 0.5), 16)
    with pytest.raises(TypeError, match="uint8"):
        sa.predict(image[None].astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        sa.predict(image)
    with pytest.raises(ValueError, match="at least one"):
        sa.predict(image[None][:0])
    with pytest.raises(ValueError, match="one target per image"):
        sa.score(image[None], [])
