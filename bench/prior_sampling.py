"""Diffusion-prior sampling throughput on this machine, next to the f32 matmul ceiling.

    python bench/prior_sampling.py --workdir=runs/shapes_prior [--batch=256]

Loads the trained prior of `--workdir` (its config.json and final checkpoint; its CLIP run must
still be where `clip.workdir` says), compiles the whole sampler (all `sampling.num_steps` steps,
`sampling.num_candidates` candidates, guidance as configured) as one program over all CPU
devices, and times it on validation captions. FLOPs come from the compiled program's cost
analysis (its loop body, times the number of steps).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import jax

    from dalle2_jax.parallel.host_cpu import configure_cpu_backend

    configure_cpu_backend()
    import ml_collections
    import numpy as np
    import orbax.checkpoint as ocp
    from jax.sharding import NamedSharding, PartitionSpec

    from bench.ceiling import matmul_flops_per_sec
    from dalle2_jax.data import embeddings
    from dalle2_jax.stages.prior import PriorStage

    config = ml_collections.ConfigDict(json.loads(open(os.path.join(args.workdir, "config.json")).read()))
    stage = PriorStage(config)
    state = ocp.StandardCheckpointer().restore(
        os.path.join(os.path.abspath(args.workdir), "checkpoints", str(config.train.num_steps), "state"))
    params = state["ema_params"] if state.get("ema_params") is not None else state["params"]
    data = embeddings.EmbeddingSource(stage.embeddings_dir, "validation").all(limit=args.batch)
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    batch = {k: jax.device_put(np.asarray(data[k]), NamedSharding(mesh, PartitionSpec("data")))
             for k in ("text_embed", "text_encodings", "text_mask")}
    batch["index"] = jax.device_put(np.arange(args.batch, dtype=np.int32), NamedSharding(mesh, PartitionSpec("data")))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))

    sample = jax.jit(stage._sample)
    compiled = sample.lower(params, batch).compile()
    cost = compiled.cost_analysis()
    # XLA's cost analysis counts a while-loop body once, whatever its trip count: the sampler's
    # loop runs sampling.num_steps times (the work outside it, the candidate choice, is negligible).
    per_step = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]) * jax.device_count()
    flops = per_step * config.sampling.num_steps
    jax.block_until_ready(compiled(params, batch))
    best = float("inf")
    for _ in range(args.repeats):
        started = time.perf_counter()
        jax.block_until_ready(compiled(params, batch))
        best = min(best, time.perf_counter() - started)
    ceiling = matmul_flops_per_sec()["ceiling"]
    s = config.sampling
    print(f"prior: {args.workdir} ({s.sampler}, {s.num_steps} steps, {s.num_candidates} candidates, "
          f"guidance {s.guidance_scale})")
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}")
    print(f"sampled {args.batch} embeddings in {best:.2f} s: {args.batch / best:.0f} embeddings/s")
    print(f"model FLOPs per batch: {flops:.3g}; achieved {flops / best / 1e9:.1f} GFLOP/s")
    print(f"f32 matmul ceiling (whole machine): {ceiling / 1e9:.1f} GFLOP/s; fraction {flops / best / ceiling:.0%}")


if __name__ == "__main__":
    main()
