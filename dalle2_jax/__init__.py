"""dalle2_jax: DALL-E 2 (unCLIP, Ramesh et al. 2022) in JAX/Flax."""
