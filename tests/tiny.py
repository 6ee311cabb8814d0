"""Tiny configs shared by tests: the shapes CLIP shrunk to run in seconds on CPU."""

from __future__ import annotations

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_CLIP_OVERRIDES = {
    "data.train_size": 256,
    "data.validation_size": 64,
    "data.heldout_size": 64,
    "data.batch_size": 16,
    "data.eval_batch_size": 32,
    "data.num_threads": 1,
    "model.embed_dim": 16,
    "model.vision.width": 16,
    "model.vision.depth": 1,
    "model.vision.num_heads": 2,
    "model.text.width": 16,
    "model.text.depth": 1,
    "model.text.num_heads": 2,
    "tokenizer.context_length": 16,
    "optim.warmup_steps": 2,
    "train.num_steps": 6,
    "train.log_every": 2,
    "train.eval_every": 100,
    "train.checkpoint_every": 3,
}


def load_config(path: str, arg: str | None = None):
    """`get_config(arg)` of a config file relative to the repository root."""
    spec = importlib.util.spec_from_file_location("config_under_test", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def tiny_clip_config(data_dir: str, **overrides):
    """The shapes CLIP config with TINY_CLIP_OVERRIDES (and `overrides`, dotted names) applied."""
    config = load_config("configs/shapes/clip.py")
    config.data.data_dir = data_dir
    for field, value in {**TINY_CLIP_OVERRIDES, **overrides}.items():
        section = config
        *parents, name = field.split(".")
        for parent in parents:
            section = section[parent]
        section[name] = value
    return config


def tiny_clip_flags(data_dir: str, **overrides) -> list[str]:
    """The same as command-line flags for `python -m dalle2_jax.train`."""
    merged = {"data.data_dir": data_dir, **TINY_CLIP_OVERRIDES, **overrides}
    return [f"--config.{k}={v}" for k, v in merged.items()]
