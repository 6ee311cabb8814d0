"""Sinusoidal timestep embeddings shared by the diffusion models.

The diffusion prior (Ramesh et al. 2022, sec 2.2) and the decoder/upsampler UNets (Dhariwal &
Nichol 2021, sec 3; Nichol et al. 2022, GLIDE) both embed the diffusion timestep with the
Transformer's sinusoidal position encoding (Vaswani et al. 2017, sec 3.5), as DDPM does
(Ho et al. 2020, appendix B).
"""

import math

import jax
import jax.numpy as jnp


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding of timesteps (Vaswani et al. 2017, sec 3.5), as in DDPM and GLIDE.

    Args:
      t: [B] timestep indices (integers or floats).
      dim: embedding size (even).
      max_period: the longest wavelength.

    Returns:
      [B, dim] float32: cosines at geometric frequencies 1 .. 1 / max_period, then sines.
    """
    if dim % 2:
        raise ValueError(f"timestep embedding size {dim} must be even")
    half = dim // 2
    frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[:, None] * frequencies[None, :]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
