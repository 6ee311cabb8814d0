"""Forward + backward speed of 3x3 convolutions at the shapes decoder's sizes, four ways.

    python bench/conv_gradients.py

XLA:CPU's kernel-gradient convolutions are the slowest part of the decoder's train step
(README, Benchmarks), so this compares, on all CPU devices (the batch split over them) and in
alternating timed rounds within one process (so that the machine's speed changes fall on all
alike): XLA's own gradients with its convolutions on Eigen (the train step's setting,
`parallel/host_cpu.py`) and on YNNPACK (jaxlib 0.10's default, which every other program
keeps); a custom VJP whose kernel gradient is one matmul over im2col patches; and one whose
kernel gradient is nine matmuls over shifted inputs (both compiled like the train step). It
checks that every way's gradients match XLA's before timing them. Six conv + SiLU layers,
batch 32.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dalle2_jax.parallel.host_cpu import configure_cpu_backend, training_compiler_options

DIMENSIONS = ("NHWC", "HWIO", "NHWC")
LAYERS = 6


def xla_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DIMENSIONS)


def kernel_grad_im2col(x: jax.Array, dy: jax.Array, size: int) -> jax.Array:
    patches = lax.conv_general_dilated_patches(x, (size, size), (1, 1), "SAME", dimension_numbers=DIMENSIONS)
    grad = jnp.einsum("bhwk,bhwo->ko", patches, dy)  # patch features ordered (channel, row, column)
    return grad.reshape(x.shape[-1], size, size, -1).transpose(1, 2, 0, 3)


def kernel_grad_shifted(x: jax.Array, dy: jax.Array, size: int) -> jax.Array:
    height, width, pad = x.shape[1], x.shape[2], size // 2
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return jnp.stack([jnp.stack([jnp.einsum("bhwc,bhwo->co", padded[:, i:i + height, j:j + width], dy)
                                 for j in range(size)]) for i in range(size)])


def with_kernel_grad(kernel_grad):
    """`xla_conv` whose kernel gradient is `kernel_grad` (the input gradient stays XLA's)."""
    @jax.custom_vjp
    def conv(x, w):
        return xla_conv(x, w)

    def forward(x, w):
        return xla_conv(x, w), (x, w)

    def backward(residuals, dy):
        x, w = residuals
        _, input_vjp = jax.vjp(lambda x_: xla_conv(x_, w), x)
        return input_vjp(dy)[0], kernel_grad(x, dy, w.shape[0])

    conv.defvjp(forward, backward)
    return conv


def loss(conv, kernels, x):
    for w in kernels:
        x = jax.nn.silu(conv(x, w))
    return jnp.mean(x ** 2)


def main() -> None:
    configure_cpu_backend()
    training = training_compiler_options("cpu")
    ways = {"xla": (xla_conv, training), "xla_ynnpack": (xla_conv, None),
            "im2col": (with_kernel_grad(kernel_grad_im2col), training),
            "shifted": (with_kernel_grad(kernel_grad_shifted), training)}
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    rng = np.random.default_rng(0)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}")
    for batch, side, channels in [(32, 16, 64), (32, 8, 128)]:
        x = jax.device_put(jnp.asarray(rng.normal(size=(batch, side, side, channels)), jnp.float32), batch_sharding)
        kernels = [jnp.asarray(rng.normal(size=(3, 3, channels, channels)) / np.sqrt(9 * channels), jnp.float32)
                   for _ in range(LAYERS)]
        steps = {k: jax.jit(jax.grad(functools.partial(loss, conv), argnums=(0, 1)), compiler_options=options)
                 for k, (conv, options) in ways.items()}
        reference = jax.tree.leaves(steps["xla"](kernels, x))
        for name, step in steps.items():
            error = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                        for a, b in zip(jax.tree.leaves(step(kernels, x)), reference))
            assert error < 1e-4, f"{name}: gradients differ from XLA's by {error:.2e} (relative)"
        flops = LAYERS * 3 * 2 * batch * side * side * channels * channels * 9  # forward + two gradients
        times = {k: [] for k in steps}
        for _ in range(5):
            for name, step in steps.items():
                jax.block_until_ready(step(kernels, x))
                started = time.perf_counter()
                for _ in range(10):
                    out = step(kernels, x)
                jax.block_until_ready(out)
                times[name].append((time.perf_counter() - started) / 10)
        for name in steps:
            seconds = float(np.median(times[name]))
            print(f"batch {batch}, {side}x{side}, {channels} channels, {name}: {seconds * 1e3:.1f} ms, "
                  f"{flops / seconds / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
