"""Images as non-overlapping patches and back (space-to-depth / depth-to-space)."""

import jax


def to_patches(images: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, C] -> [B, H / p, W / p, p * p * C]: each p x p patch flattened row by row.

    ViT's patch embedding (Dosovitskiy et al. 2021, sec 3.1) flattens these before its linear map;
    a UNet can run on them directly (`UNet.patch_size`).
    """
    batch, height, width, channels = images.shape
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"a {height}x{width} image does not divide into {p}x{p} patches")
    patches = images.reshape(batch, height // p, p, width // p, p, channels)
    return patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, height // p, width // p, p * p * channels)


def from_patches(patches: jax.Array, patch_size: int) -> jax.Array:
    """The inverse of `to_patches`: [B, h, w, p * p * C] -> [B, h * p, w * p, C]."""
    batch, grid_h, grid_w, depth = patches.shape
    p = patch_size
    if depth % (p * p):
        raise ValueError(f"{depth} channels are not {p}x{p} patches of whole channels")
    images = patches.reshape(batch, grid_h, grid_w, p, p, depth // (p * p))
    return images.transpose(0, 1, 3, 2, 4, 5).reshape(batch, grid_h * p, grid_w * p, depth // (p * p))
