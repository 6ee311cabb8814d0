"""Named sharding strategies: logical-axis rule sets per strategy and model family.

A strategy (`config.sharding.strategy`) says what the mesh axes are for:

- ``dp``: pure data parallelism. The batch is split over ``data`` and ``fsdp``; every parameter
  and optimizer moment is replicated.
- ``fsdp``: ZeRO-3. The batch is split as in ``dp``; parameters, gradients and optimizer state
  are split over ``fsdp`` and gathered per layer inside the step.
- ``fsdp_tp``: FSDP plus tensor parallelism: attention heads, MLP hidden units, the vocabulary
  and convolution output channels are split over ``tensor``; the rest as in ``fsdp``.

Rules are tried in order and a logical name may appear more than once: the later entries are
fallbacks, used when the earlier mesh axis is already taken by another dimension of the array or
does not divide the dimension (see `sharding.fit_partition_spec`). The two families differ in
which dimension FSDP prefers: transformers split the model width, UNets the conv input channels.
"""

from __future__ import annotations

from typing import Any

from dalle2_jax.nn import axes
from dalle2_jax.parallel.sharding import Rules, rules_from_config

STRATEGIES = ("dp", "fsdp", "fsdp_tp")
# The mesh axes each strategy uses besides the batch axes; a mesh axis a strategy leaves idle
# must have size 1.
STRATEGY_AXES = {"dp": ("data", "fsdp"), "fsdp": ("data", "fsdp"), "fsdp_tp": ("data", "fsdp", "tensor")}

# config.stage -> model family; other stages (e.g. tests' toy stages) get the transformer rules.
FAMILY_OF_STAGE = {"clip": "transformer", "prior": "transformer", "decoder": "unet", "upsampler": "unet"}

_BATCH = ((axes.BATCH, ("data", "fsdp")),)
# Names whose dimensions stay whole under every strategy.
_NEVER_SPLIT = ((axes.LENGTH, None), (axes.PATCH, None), (axes.NORM, None), (axes.LAYERS, None))

# FSDP preference order of the names holding model weights, per family ('kv' last: a per-head
# bias [heads, kv] with fewer heads than FSDP shards is split along kv).
_FSDP_ORDER = {
    "transformer": (axes.EMBED, axes.MLP, axes.HEADS, axes.VOCAB, axes.KV),
    "unet": (axes.CONV_IN, axes.CONV_OUT, axes.EMBED, axes.MLP, axes.HEADS, axes.VOCAB, axes.KV),
}
# Tensor-parallel names, per family (the split that needs no gather inside a block).
_TP_ORDER = {
    "transformer": (axes.HEADS, axes.MLP, axes.VOCAB),
    "unet": (axes.CONV_OUT, axes.HEADS, axes.MLP, axes.VOCAB),
}


def strategy_rules(strategy: str, family: str) -> Rules:
    """The logical-axis rules of `strategy` for the model `family` ('transformer' or 'unet')."""
    if strategy not in STRATEGIES:
        raise ValueError(f"sharding.strategy={strategy!r}: expected one of {STRATEGIES}")
    if family not in _FSDP_ORDER:
        raise ValueError(f"unknown model family {family!r}: expected one of {sorted(_FSDP_ORDER)}")
    tensor = tuple((name, "tensor") for name in _TP_ORDER[family]) if strategy == "fsdp_tp" else ()
    fsdp = tuple((name, "fsdp") for name in _FSDP_ORDER[family]) if strategy != "dp" else ()
    return _BATCH + _NEVER_SPLIT + tensor + fsdp


def rules_for_config(config: Any) -> Rules:
    """The config's explicit `sharding.rules` if given, else its strategy's rules for its stage."""
    if config.sharding.rules:
        return rules_from_config(config.sharding.rules)
    return strategy_rules(config.sharding.strategy, FAMILY_OF_STAGE.get(config.stage, "transformer"))
