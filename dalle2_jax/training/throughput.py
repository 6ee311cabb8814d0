"""Throughput accounting: model FLOPs of a compiled step, per-device peak FLOP/s, and MFU.

MFU (model FLOPs utilisation) = achieved FLOP/s per device / the device's peak FLOP/s. The
FLOPs are XLA's count for the compiled, partitioned step (`Compiled.cost_analysis`), so a step
with rematerialisation also counts the recomputed forward pass (strictly, hardware FLOPs).
XLA counts the body of a loop once however often it runs; `repeated_loop_flops` adds, from the
step's jaxpr, the matrix-multiply and convolution FLOPs of the iterations it leaves out (scanned
transformer layers, gradient-accumulation microbatches; their element-wise work stays uncounted).

Peaks are dense bfloat16 matrix-unit figures from the vendors' data sheets, per chip (a TPU v4
or v5p chip is one JAX device; an H100 or A100 is one GPU). On CPU there is no data sheet: the
peak is this machine's measured float32 matmul rate (`matmul_flops_per_sec`), shared by the CPU
devices the host is split into.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

# Dense bf16 peak FLOP/s per device, matched against `device.device_kind` (lower case, first
# matching key wins, so the more specific keys come first).
PEAK_FLOPS_PER_DEVICE = (
    ("tpu v6 lite", 918e12),  # v6e (Trillium)
    ("tpu v6e", 918e12),
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),  # v5p reports itself as "TPU v5"
    ("tpu v4", 275e12),
    ("h200", 989e12),  # SXM, dense
    ("h100", 989e12),  # SXM, dense (PCIe cards: 756e12, set train.peak_flops_per_device)
    ("a100", 312e12),
)


def cost_flops(compiled: Any) -> float:
    """FLOPs of one call of a compiled (per-device, SPMD-partitioned) program; 0 if unknown."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def _dot_or_conv_flops(eqn: jax.extend.core.JaxprEqn) -> float:
    """2 x multiply-adds of one dot_general or convolution equation (0 for any other). A
    convolution counts every kernel tap, padding included (XLA skips the padded ones: ~20% less
    on a small conv net); it only matters for convolutions inside scans, which no model here has."""
    out = eqn.outvars[0].aval.shape
    if eqn.primitive.name == "dot_general":
        (contracting, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2.0 * math.prod(out) * math.prod(lhs[i] for i in contracting)
    if eqn.primitive.name == "conv_general_dilated":
        kernel = eqn.invars[1].aval.shape
        kernel_spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, spatial...)
        per_output = kernel[kernel_spec[1]] * math.prod(kernel[i] for i in kernel_spec[2:])
        # A transposed convolution (the input gradient of a strided one) dilates its input with
        # zeros: only 1 / dilation of the kernel's taps meet real values.
        dilation = math.prod(eqn.params["lhs_dilation"] or (1,))
        return 2.0 * math.prod(out) * per_output / dilation
    return 0.0


def _sub_jaxprs(eqn: jax.extend.core.JaxprEqn) -> list[Any]:
    found = []
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
                found.append(item.jaxpr if isinstance(item, jax.extend.core.ClosedJaxpr) else item)
    return found


def matmul_flops(jaxpr: Any, repeat_loops: bool = True) -> float:
    """Matrix-multiply and convolution FLOPs of a (closed) jaxpr: a scan's body `length` times
    (once with `repeat_loops=False`, as XLA counts it), the costlier branch of a cond, a while
    loop's body once (its trip count is not known here)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        inner = [matmul_flops(sub, repeat_loops) for sub in _sub_jaxprs(eqn)]
        if eqn.primitive.name == "cond":
            total += max(inner, default=0.0)
        elif eqn.primitive.name == "scan" and repeat_loops:
            total += eqn.params["length"] * sum(inner)
        else:
            total += sum(inner) + _dot_or_conv_flops(eqn)
    return total


def repeated_loop_flops(jaxpr: Any) -> float:
    """The matmul and convolution FLOPs of scan iterations that XLA's count of `jaxpr`'s program
    leaves out (it counts each loop body once): add it, divided among the devices, to `cost_flops`."""
    return matmul_flops(jaxpr, repeat_loops=True) - matmul_flops(jaxpr, repeat_loops=False)


def _best_rate(fn: Callable, args: Sequence[jax.Array], flops: float, repeats: int, min_seconds: float) -> float:
    """`flops` over the fastest of at least `repeats` calls made over at least `min_seconds`."""
    jax.block_until_ready(fn(*args))  # compile and warm up
    best, calls, deadline = float("inf"), 0, time.perf_counter() + min_seconds
    while calls < repeats or time.perf_counter() < deadline:
        started = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - started)
        calls += 1
    return flops / best


def matmul_flops_per_sec(n: int = 2048, repeats: int = 5, devices: Sequence[jax.Device] | None = None,
                         min_seconds: float = 1.0) -> dict[str, float]:
    """Best f32 [n,n]x[n,n] matmul rate on one device, and with rows split over `devices`
    (default: all); 'ceiling' is the larger of the two. Each is the fastest of at least
    `repeats` calls spread over at least `min_seconds`: on a shared VM a few calls in a row can
    all fall in a slow spell (three 1024 matmuls measured a 2-core host at 90 and at 163 GFLOP/s
    minutes apart), and a low ceiling inflates every MFU computed from it."""
    devices = list(jax.devices() if devices is None else devices)
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    flops = 2.0 * n**3
    one = _best_rate(matmul, (jax.device_put(a, devices[0]), jax.device_put(b, devices[0])), flops, repeats,
                     min_seconds)
    mesh = jax.sharding.Mesh(devices, ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = jax.device_put(a, NamedSharding(mesh, PartitionSpec("x")))
    full = jax.device_put(b, NamedSharding(mesh, PartitionSpec()))
    sharded = _best_rate(matmul, (rows, full), flops, repeats, min_seconds)
    return {"one_device": one, "all_devices": sharded, "ceiling": max(one, sharded)}


@functools.cache
def _cpu_ceiling(num_devices: int) -> float:
    devices = jax.local_devices()[:num_devices]
    return matmul_flops_per_sec(n=1024, repeats=3, devices=devices, min_seconds=1.0)["ceiling"]


def peak_flops_per_device(device: jax.Device, configured: float = 0.0) -> float:
    """Peak FLOP/s of one `device`: `configured` if positive, else the table's figure, else (on
    CPU) the measured matmul ceiling of this host divided among its CPU devices; 0 if unknown."""
    if configured > 0:
        return configured
    kind = device.device_kind.lower()
    for key, peak in PEAK_FLOPS_PER_DEVICE:
        if key in kind:
            return peak
    if device.platform == "cpu":
        count = jax.local_device_count()
        return _cpu_ceiling(count) / count
    return 0.0


def throughput_metrics(flops_per_device: float, steps_per_sec: float, peak_per_device: float) -> dict[str, float]:
    """Achieved FLOP/s per device and MFU (absent when the peak is unknown)."""
    achieved = flops_per_device * steps_per_sec
    metrics = {"flops_per_sec_per_device": achieved}
    if peak_per_device > 0:
        metrics["mfu"] = achieved / peak_per_device
    return metrics
