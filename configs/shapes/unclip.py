"""The main job: the whole unCLIP stack on the built-in shapes dataset, stage after stage.

    python -m dalle2_jax.train --config=configs/shapes/unclip.py --workdir=runs/shapes_unclip

Trains CLIP (`WORKDIR/clip`, configs/shapes/clip.py), computes its embeddings, then the diffusion
prior (`WORKDIR/prior`, configs/shapes/prior.py); rerunning skips finished stages and resumes an
unfinished one. Every field of a stage is overridable: `--config.prior.train.num_steps=500`.
The decoder and upsamplers join here when they exist. `WORKDIR/report.json` collects each
stage's final evaluation and wall time. Measured results are in the README.
"""

import importlib.util
import os

from dalle2_jax.multistage import PLACEHOLDER, multistage_config


def _stage_config(name: str):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"shapes_{name}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(arg: str | None = None):
    del arg  # no variants
    clip, prior = _stage_config("clip"), _stage_config("prior")
    prior.clip.workdir = f"{PLACEHOLDER}/clip"
    return multistage_config({"clip": clip, "prior": prior})
