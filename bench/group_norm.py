"""Forward + backward speed of GroupNorm + AdaGN + SiLU at the shapes decoder's sizes, two ways.

    python bench/group_norm.py

Compares `flax.linen.GroupNorm` followed by AdaGN's `* (1 + scale) + shift` (what the UNet ran
until 2026-12-07) with `dalle2_jax.nn.group_norm.GroupNorm`, which reduces
over the spatial axes with the channels innermost and folds the normalisation and modulation
into one per-channel multiply-add. One CPU device (of one per core) with its share of the train
step's batch (16 of 32 on two cores), compiled like the train step (`parallel/host_cpu.py`), in
alternating timed rounds within one process; checks that both give the same values and gradients
before timing them.
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dalle2_jax.models.unet import num_groups
from dalle2_jax.nn.group_norm import GroupNorm
from dalle2_jax.parallel.host_cpu import configure_cpu_backend, training_compiler_options


def flax_norm(variables, x, scale, shift):
    h = nn.GroupNorm(num_groups=num_groups(x.shape[-1]), epsilon=1e-5).apply(variables, x)
    return h * (1 + scale[:, None, None]) + shift[:, None, None]


def folded_norm(variables, x, scale, shift):
    return GroupNorm(num_groups(x.shape[-1])).apply(variables, x, scale, shift)


def gradient_step(norm, options):
    """The jitted gradients of a weighted sum of SiLU(norm(...)) (the ResBlock's use)."""
    def loss(variables, x, scale, shift, weights):
        return jnp.sum(jax.nn.silu(norm(variables, x, scale, shift)) * weights)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)), compiler_options=options)


def main() -> None:
    configure_cpu_backend()
    options = training_compiler_options("cpu")
    device = jax.devices()[0]
    rng = np.random.default_rng(0)
    batch = 32 // jax.device_count()
    print(f"one of {jax.device_count()} {device.platform} devices, batch {batch}")
    for side, channels in [(16, 64), (8, 128), (16, 192), (8, 256)]:
        def array(*shape, mean=0.0, std=1.0):
            return jnp.asarray(rng.normal(mean, std, size=shape), jnp.float32)

        x = jax.device_put(array(batch, side, side, channels, mean=0.5, std=2.0), device)
        scale, shift = (jax.device_put(array(batch, channels, std=0.1), device) for _ in range(2))
        weights = jax.device_put(array(batch, side, side, channels), device)
        variables = jax.device_put({"params": {"scale": 1 + array(channels, std=0.1),
                                               "bias": array(channels, std=0.1)}}, device)
        steps = {"flax": gradient_step(flax_norm, options), "folded": gradient_step(folded_norm, options)}
        reference = jax.tree.leaves(steps["flax"](variables, x, scale, shift, weights))
        error = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                    for a, b in zip(jax.tree.leaves(steps["folded"](variables, x, scale, shift, weights)), reference))
        assert error < 1e-4, f"gradients differ from flax's by {error:.2e} (relative)"
        times = {k: [] for k in steps}
        for _ in range(7):
            for name, step in steps.items():
                jax.block_until_ready(step(variables, x, scale, shift, weights))
                started = time.perf_counter()
                for _ in range(50):
                    out = step(variables, x, scale, shift, weights)
                jax.block_until_ready(out)
                times[name].append((time.perf_counter() - started) / 50)
        print(f"{side}x{side}, {channels} channels: "
              + ", ".join(f"{name} {np.median(t) * 1e3:.3f} ms" for name, t in times.items()), flush=True)


if __name__ == "__main__":
    main()
