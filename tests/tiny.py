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


# The decoder and upsampler shrunk the same way (tiny sizes, 3 steps, 3 sampling steps).
TINY_DECODER_OVERRIDES = {
    "data.batch_size": 16, "data.eval_batch_size": 16, "data.num_threads": 1,
    "model.channels": 8, "model.channel_mults": (1, 2), "model.attention_resolutions": (16,), "model.clip_spatial": 16,
    "model.head_channels": 8, "model.text.width": 8, "model.text.depth": 1, "model.text.num_heads": 2,
    "decoder.eval_limit": 8, "sampling.num_steps": 3, "optim.warmup_steps": 1,
    "train.num_steps": 3, "train.log_every": 1, "train.eval_every": 100, "train.checkpoint_every": 100,
}
TINY_UPSAMPLER_OVERRIDES = {
    "data.batch_size": 16, "data.eval_batch_size": 16, "data.num_threads": 1,
    "model.channels": 8, "model.channel_mults": (1, 2), "upsampler.crop_size": 16,
    "upsampler.eval_limit": 8, "sampling.num_steps": 3, "optim.warmup_steps": 1,
    "train.num_steps": 3, "train.log_every": 1, "train.eval_every": 100, "train.checkpoint_every": 100,
}
TINY_DATA_FIELDS = ("data_dir", "train_size", "validation_size", "heldout_size")


def set_fields(config, fields: dict):
    """Sets dotted fields (`"model.text.width": 8`) of a config; returns it."""
    for field, value in fields.items():
        section = config
        *parents, name = field.split(".")
        for parent in parents:
            section = section[parent]
        section[name] = value
    return config


def tiny_clip_config(data_dir: str, **overrides):
    """The shapes CLIP config with TINY_CLIP_OVERRIDES (and `overrides`, dotted names) applied."""
    config = load_config("configs/shapes/clip.py")
    config.data.data_dir = data_dir
    return set_fields(config, {**TINY_CLIP_OVERRIDES, **overrides})


def tiny_stage_config(path: str, data_dir: str, overrides: dict, **fields):
    """A stage config file shrunk by `overrides` (and `fields`), reading the tiny shapes dataset."""
    config = set_fields(load_config(path), {**overrides, **fields})
    tiny_data = {k: v for k, v in TINY_CLIP_OVERRIDES.items() if k.split(".")[-1] in TINY_DATA_FIELDS}
    return set_fields(config, {"data.data_dir": data_dir, **tiny_data})


def tiny_clip_flags(data_dir: str, **overrides) -> list[str]:
    """The same as command-line flags for `python -m dalle2_jax.train`."""
    merged = {"data.data_dir": data_dir, **TINY_CLIP_OVERRIDES, **overrides}
    return [f"--config.{k}={v}" for k, v in merged.items()]


TINY_PRIOR_OVERRIDES = {
    "model.width": 16, "model.depth": 1, "model.num_heads": 2, "data.batch_size": 16,
    "data.eval_batch_size": 16, "data.num_threads": 1, "sampling.num_steps": 4, "prior.eval_limit": 16,
    "train.num_steps": 3, "train.log_every": 1, "train.eval_every": 100, "train.checkpoint_every": 100,
}
TINY_SAMPLES = {"num_seen": 4, "num_heldout": 2, "batch_size": 4}


def tiny_unclip_flags(data_dir: str) -> list[str]:
    """Command-line flags shrinking every stage of the main job (configs/shapes/unclip.py)."""
    flags = []
    for stage, overrides in (("clip", TINY_CLIP_OVERRIDES), ("prior", TINY_PRIOR_OVERRIDES),
                             ("decoder", TINY_DECODER_OVERRIDES), ("upsampler", TINY_UPSAMPLER_OVERRIDES)):
        flags += [f"--config.{stage}.{k}={_flag_value(v)}" for k, v in overrides.items()]
        tiny_data = {k: v for k, v in TINY_CLIP_OVERRIDES.items() if k.split(".")[-1] in TINY_DATA_FIELDS}
        flags += [f"--config.{stage}.{k}={v}" for k, v in {"data.data_dir": data_dir, **tiny_data}.items()]
        flags.append(f"--config.{stage}.mesh.num_cpu_devices=2")
    flags += [f"--config.samples.{k}={v}" for k, v in TINY_SAMPLES.items()]
    return flags


def _flag_value(value) -> str:
    return f"({','.join(map(str, value))},)" if isinstance(value, tuple) else str(value)
