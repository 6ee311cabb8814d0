"""Train-step speed, model FLOPs and MFU of any stage's config on this machine.

    python bench/train_step.py [--config=configs/shapes/clip.py] [--steps=30] [--config.x=y ...]
    python bench/train_step.py --config=configs/shapes/prior.py --config.clip.workdir=runs/shapes_clip

Trains the config for a few steps in a temporary workdir through the real command line
(`dalle2_jax.train`, all CPU devices), then reads the step rate, the compiled step's model
FLOPs and the per-device peak the run used from `metrics.jsonl`. The first logging interval
(which includes warm-up) is skipped. The peak is the device table's figure on TPU/GPU and the
measured f32 matmul rate on CPU (`dalle2_jax.training.throughput`).

On CPU the run's own peak is a one-second measurement at its start, and this VM's speed drifts
by a third within minutes. So the script also measures the whole machine's matmul ceiling itself,
for several seconds just before and just after the run, and prints the achieved FLOP/s as a
fraction of the higher of the two: the figure the README quotes.

The timed steps also read the dataset: the shapes stages' in-memory cache is empty in a fresh
process, so each step's images are decoded on the cores that train (in the main job they come
from the cache the CLIP stage filled). `--config.data.name=synthetic` feeds constant batches of
the same shapes instead: the same compiled step and model FLOPs, without the input pipeline.
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
        run_config = json.loads(open(os.path.join(workdir, "config.json")).read())
    first = next(r for r in records if "model_flops_per_step" in r)
    rates = [r["train/steps_per_sec"] for r in records if "train/steps_per_sec" in r][1:]
    return {"model_flops_per_step": first["model_flops_per_step"], "steps_per_sec": sum(rates) / len(rates),
            "peak_flops_per_device": first["peak_flops_per_device"], "batch_size": run_config["data"]["batch_size"],
            "num_cpu_devices": run_config["mesh"]["num_cpu_devices"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes/clip.py")
    parser.add_argument("--steps", type=int, default=30)
    args, overrides = parser.parse_known_args()
    args.overrides = overrides  # extra --config.x=y flags go to the training command

    import jax

    from dalle2_jax.parallel.host_cpu import configure_cpu_backend
    from dalle2_jax.training.throughput import matmul_flops_per_sec

    configure_cpu_backend()
    on_cpu = jax.devices()[0].platform == "cpu"
    ceilings = [matmul_flops_per_sec(min_seconds=5.0)["ceiling"]] if on_cpu else []
    result = train_rate(args.config, args.steps, args.overrides)
    ceilings += [matmul_flops_per_sec(min_seconds=5.0)["ceiling"]] if on_cpu else []
    achieved = result["model_flops_per_step"] * result["steps_per_sec"]
    devices = (result["num_cpu_devices"] or os.cpu_count()) if on_cpu else jax.device_count()
    peak = result["peak_flops_per_device"]
    print(f"config: {args.config} {' '.join(args.overrides)}")
    print(f"devices: {devices} x {jax.devices()[0].platform}")
    print(f"train step: {1000 / result['steps_per_sec']:.0f} ms ({result['steps_per_sec']:.2f} steps/s, "
          f"{result['steps_per_sec'] * result['batch_size']:.1f} examples/s)")
    print(f"model FLOPs per step: {result['model_flops_per_step']:.3g}")
    print(f"achieved: {achieved / 1e9:.1f} GFLOP/s total, {achieved / devices / 1e9:.1f} GFLOP/s per device")
    print(f"the run's peak per device: {peak / 1e9:.1f} GFLOP/s ({jax.devices()[0].device_kind})")
    print(f"the run's MFU: {achieved / devices / peak:.1%}" if peak > 0 else
          "the run's MFU: peak unknown, set train.peak_flops_per_device")
    if ceilings:
        ceiling = max(ceilings)
        measured = " / ".join(f"{c / 1e9:.1f}" for c in ceilings)
        print(f"f32 matmul ceiling (whole machine) before / after the run: {measured} GFLOP/s; "
              f"fraction of the higher: {achieved / ceiling:.1%}")


if __name__ == "__main__":
    main()
