"""Tests for dalle2_jax.nn.patches: images as flattened patches and back."""

import numpy as np
import pytest

from dalle2_jax.nn.patches import from_patches, to_patches


def test_patches_hold_each_pixel_where_expected_and_invert():
    images = np.random.default_rng(0).standard_normal((2, 6, 4, 3)).astype(np.float32)
    p = 2
    patches = np.asarray(to_patches(images, p))
    assert patches.shape == (2, 3, 2, p * p * 3)
    for i, j, di, dj, c in np.ndindex(3, 2, p, p, 3):
        np.testing.assert_array_equal(patches[:, i, j, (di * p + dj) * 3 + c], images[:, i * p + di, j * p + dj, c])
    np.testing.assert_array_equal(np.asarray(from_patches(patches, p)), images)
    np.testing.assert_array_equal(np.asarray(to_patches(images, 1)), images)


def test_sizes_that_do_not_divide_are_refused():
    with pytest.raises(ValueError, match="5x4 image does not divide into 2x2 patches"):
        to_patches(np.zeros((1, 5, 4, 3)), 2)
    with pytest.raises(ValueError, match="not 2x2 patches"):
        from_patches(np.zeros((1, 2, 2, 6)), 2)
