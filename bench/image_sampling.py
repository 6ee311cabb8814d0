"""Decoder / upsampler sampling throughput on this machine, next to the f32 matmul ceiling.

    python bench/image_sampling.py --config=configs/shapes/decoder.py --clip_workdir=runs/shapes_unclip/clip
    python bench/image_sampling.py --config=configs/shapes/upsampler.py --batch=16

Builds the stage from its config with freshly initialised parameters (throughput does not depend
on their values), compiles the whole sampler (every step, guidance as configured or overridden)
as one program with the batch sharded over all CPU devices, and times it. FLOPs come from the
compiled program's cost analysis: XLA counts a loop body once, so the per-step figure is
multiplied by the number of steps. The defaults (batch 8, 50 DDIM steps, guidance 2) match the
PyTorch reference figure quoted in the README.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes/decoder.py")
    parser.add_argument("--clip_workdir", default="", help="the decoder's CLIP run (decoder configs only)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=2.0, help="decoder only; upsamplers are not guided")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import jax

    from dalle2_jax.parallel.host_cpu import configure_cpu_backend

    configure_cpu_backend()
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from bench.ceiling import matmul_flops_per_sec
    from dalle2_jax.parallel import sharding
    from dalle2_jax.stages import make_stage
    from tests.tiny import load_config

    config = load_config(args.config)
    config.sampling.num_steps = args.steps
    if config.stage == "decoder":
        config.clip.workdir = args.clip_workdir or config.clip.workdir
        config.sampling.guidance_scale = args.guidance
    stage = make_stage(config)
    params = sharding.unbox_abstract(jax.jit(stage.init_params)(jax.random.key(0)))
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = NamedSharding(mesh, PartitionSpec("data"))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    if config.stage == "decoder":
        batch = {"image_embed": jnp.ones((args.batch, stage.clip.embed_dim)) / stage.clip.embed_dim ** 0.5,
                 "tokens": jnp.ones((args.batch, stage.clip.context_length), jnp.int32)}
    else:
        low = config.upsampler.low_res_size
        batch = {"low_res": jnp.zeros((args.batch, low, low, 3))}
    batch = jax.device_put(batch, rows)

    sample = jax.jit(stage.generate)
    compiled = sample.lower(params, batch, jax.random.key(0)).compile()
    cost = compiled.cost_analysis()
    per_step = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]) * jax.device_count()
    flops = per_step * args.steps
    jax.block_until_ready(compiled(params, batch, jax.random.key(0)))
    best = float("inf")
    for _ in range(args.repeats):
        started = time.perf_counter()
        jax.block_until_ready(compiled(params, batch, jax.random.key(1)))
        best = min(best, time.perf_counter() - started)
    ceiling = matmul_flops_per_sec()["ceiling"]
    s = config.sampling
    size = stage.model.image_size
    print(f"{config.stage}: {args.config} ({size} px, {s.sampler}, {args.steps} steps, guidance {s.guidance_scale})")
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}")
    print(f"sampled {args.batch} images in {best:.2f} s: {args.batch / best:.2f} images/s")
    print(f"model FLOPs per batch: {flops:.3g}; achieved {flops / best / 1e9:.1f} GFLOP/s")
    print(f"f32 matmul ceiling (whole machine): {ceiling / 1e9:.1f} GFLOP/s; fraction {flops / best / ceiling:.0%}")


if __name__ == "__main__":
    main()
