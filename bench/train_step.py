"""Train-step speed of any stage's config on this machine, next to the f32 matmul ceiling.

    python bench/train_step.py [--config=configs/shapes/clip.py] [--steps=30] [--config.x=y ...]
    python bench/train_step.py --config=configs/shapes/prior.py --config.clip.workdir=runs/shapes_clip

Trains the config for a few steps in a temporary workdir through the real command line
(`dalle2_jax.train`, all CPU devices), then reads the step rate and the compiled step's model
FLOPs from `metrics.jsonl`. The first logging interval (which includes warm-up) is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def train_rate(config: str, steps: int, overrides: list[str]) -> dict[str, float]:
    """Steps/s (after the first logging interval) and model FLOPs per step of a short real run."""
    with tempfile.TemporaryDirectory() as workdir:
        log_every = max(steps // 3, 1)
        command = [sys.executable, "-m", "dalle2_jax.train", f"--config={config}", f"--workdir={workdir}",
                   f"--config.train.num_steps={steps}", f"--config.train.log_every={log_every}",
                   f"--config.train.eval_every={10 * steps}", f"--config.train.checkpoint_every={10 * steps}",
                   "--config.data.eval_limit=64", *overrides]
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
        batch_size = json.loads(open(os.path.join(workdir, "config.json")).read())["data"]["batch_size"]
    flops = next(r["model_flops_per_step"] for r in records if "model_flops_per_step" in r)
    rates = [r["train/steps_per_sec"] for r in records if "train/steps_per_sec" in r][1:]
    return {"model_flops_per_step": flops, "steps_per_sec": sum(rates) / len(rates), "batch_size": batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes/clip.py")
    parser.add_argument("--steps", type=int, default=30)
    args, overrides = parser.parse_known_args()
    args.overrides = overrides  # extra --config.x=y flags go to the training command

    import jax

    jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)
    from bench.ceiling import matmul_flops_per_sec

    ceiling = matmul_flops_per_sec()["ceiling"]
    result = train_rate(args.config, args.steps, args.overrides)
    achieved = result["model_flops_per_step"] * result["steps_per_sec"]
    devices = jax.device_count()
    print(f"config: {args.config} {' '.join(args.overrides)}")
    print(f"devices: {devices} x {jax.devices()[0].platform}")
    print(f"train step: {1000 / result['steps_per_sec']:.0f} ms ({result['steps_per_sec']:.2f} steps/s, "
          f"{result['steps_per_sec'] * result['batch_size']:.1f} examples/s)")
    print(f"model FLOPs per step: {result['model_flops_per_step']:.3g}")
    print(f"achieved: {achieved / 1e9:.1f} GFLOP/s total, {achieved / devices / 1e9:.1f} GFLOP/s per device")
    print(f"f32 matmul ceiling (whole machine): {ceiling / 1e9:.1f} GFLOP/s")
    print(f"fraction of ceiling: {achieved / ceiling:.0%}")


if __name__ == "__main__":
    main()
