"""This machine's f32 matmul FLOP/s: the ceiling our achieved FLOP/s figures are compared to.

    python bench/ceiling.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec


def _best_rate(fn, args, flops: float, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - started)
    return flops / best


def matmul_flops_per_sec(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best f32 [n,n]x[n,n] matmul rate on one device, and with rows split over all devices."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    flops = 2.0 * n**3
    one = _best_rate(matmul, (jax.device_put(a, jax.devices()[0]), jax.device_put(b, jax.devices()[0])),
                     flops, repeats)
    mesh = jax.make_mesh((jax.device_count(),), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = jax.device_put(a, NamedSharding(mesh, PartitionSpec("x")))
    full = jax.device_put(b, NamedSharding(mesh, PartitionSpec()))
    sharded = _best_rate(matmul, (rows, full), flops, repeats)
    return {"one_device": one, "all_devices": sharded, "ceiling": max(one, sharded)}


if __name__ == "__main__":
    import os

    jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)
    rates = matmul_flops_per_sec()
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}")
    for name, rate in rates.items():
        print(f"f32 matmul {name}: {rate / 1e9:.1f} GFLOP/s")
