"""Stages: one paper section each (CLIP, prior, decoder, upsampler): init, loss, data, eval.

Each stage module defines `model_config()` (its config's `model` section), `validate_config(config)`,
optionally `stage_sections()` (further config sections of its own), and the stage class named here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import ml_collections

from dalle2_jax.parallel.mesh import ConfigError
from dalle2_jax.stages.base import Stage

# config.stage -> (module, stage class); modules are imported on demand.
_STAGES = {
    "clip": ("dalle2_jax.stages.clip", "ClipStage"),
    "prior": ("dalle2_jax.stages.prior", "PriorStage"),
    "decoder": ("dalle2_jax.stages.decoder", "DecoderStage"),
    "upsampler": ("dalle2_jax.stages.upsampler", "UpsamplerStage"),
}


def stage_names() -> list[str]:
    return sorted(_STAGES)


def stage_module(name: str) -> ModuleType:
    """The module implementing stage `name`; ConfigError naming `stage` if there is none."""
    if name not in _STAGES:
        raise ConfigError(f"stage={name!r}: expected one of {stage_names()}")
    return importlib.import_module(_STAGES[name][0])


def make_stage(config: ml_collections.ConfigDict) -> Stage:
    """The stage named by `config.stage`, built from the config."""
    return getattr(stage_module(config.stage), _STAGES[config.stage][1])(config)
