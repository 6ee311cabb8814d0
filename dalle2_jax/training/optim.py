"""Optimizer from the config's `optim` section: AdamW, warmup + cosine decay, clipping.

Weight decay applies to matrices only (ndim >= 2): biases, norm scales, embeddings' scalars and
the CLIP temperature are not decayed. Non-finite gradients skip the update
(`optax.apply_if_finite`); the loop reads its counters to stop a run that keeps diverging.
"""

from __future__ import annotations

import jax
import ml_collections
import optax

# apply_if_finite applies an update anyway after this many non-finite steps in a row; the loop
# stops the run long before (train.max_nonfinite_in_a_row), so this only has to be large.
_NEVER_FORCE_UPDATE = 2**30


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then cosine (or constant) decay to the end."""
    peak = optim.learning_rate
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=optim.warmup_steps,
            decay_steps=max(num_steps, optim.warmup_steps + 1),
            end_value=peak * optim.end_learning_rate_factor,
        )
    if optim.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, optim.warmup_steps), optax.constant_schedule(peak)],
            [optim.warmup_steps],
        )
    raise ValueError(f"optim.schedule={optim.schedule!r}: expected 'cosine' or 'constant'")


def decay_mask(params):
    """True for the leaves that get weight decay: every array with two or more dimensions."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(
    optim: ml_collections.ConfigDict, num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer (AdamW with clipping, skipping non-finite updates) and its LR schedule."""
    schedule = learning_rate_schedule(optim, num_steps)
    chain = []
    if optim.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    chain.append(
        optax.adamw(
            schedule,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=decay_mask,
        )
    )
    tx = optax.apply_if_finite(optax.chain(*chain), max_consecutive_errors=_NEVER_FORCE_UPDATE)
    return tx, schedule
