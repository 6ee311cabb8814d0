"""Rematerialisation (activation checkpointing) of blocks by a named policy.

`model.remat` names what a block keeps from its forward pass for the backward pass:

- ``none``: everything (no recomputation; fastest, most memory);
- ``full``: nothing but the block's inputs: the whole block is recomputed in the backward pass;
- ``dots_saveable``: the results of matrix multiplications and convolutions, recomputing only the
  cheap element-wise work (norms, activations) in between;
- ``dots_with_no_batch_dims_saveable``: as above, but only products without batch dimensions
  (the projections, not the attention score and value products).

Older configs hold a boolean: True means ``full``, False means ``none``.
"""

from __future__ import annotations

from typing import TypeVar

import flax.linen as nn
import jax

REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")

_POLICIES = {
    "full": None,  # nn.remat's default: save nothing
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

ModuleType = TypeVar("ModuleType", bound=type[nn.Module])


def policy_name(remat: str | bool) -> str:
    """The policy name of a config value (booleans from older configs included)."""
    if isinstance(remat, bool):
        return "full" if remat else "none"
    if remat not in REMAT_POLICIES:
        raise ValueError(f"model.remat={remat!r}: expected one of {REMAT_POLICIES}")
    return remat


def remat_block(block: ModuleType, remat: str | bool) -> ModuleType:
    """`block`, rematerialised by the policy `remat` names (unchanged for 'none')."""
    name = policy_name(remat)
    if name == "none":
        return block
    return nn.remat(block, policy=_POLICIES[name])
