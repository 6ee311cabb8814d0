"""This machine's f32 matmul FLOP/s: the ceiling our achieved FLOP/s figures are compared to.

    python bench/ceiling.py

The measurement is `dalle2_jax.training.throughput.matmul_flops_per_sec`, which the training
loop also uses (at a smaller size) as the CPU's peak for MFU.
"""

from __future__ import annotations

import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dalle2_jax.parallel.host_cpu import configure_cpu_backend  # noqa: E402
from dalle2_jax.training.throughput import matmul_flops_per_sec  # noqa: E402

if __name__ == "__main__":
    configure_cpu_backend()
    rates = matmul_flops_per_sec()
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}")
    for name, rate in rates.items():
        print(f"f32 matmul {name}: {rate / 1e9:.1f} GFLOP/s")
