"""The train state: everything a step reads and writes, and everything a checkpoint holds."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax


@flax.struct.dataclass
class TrainState:
    """Parameters, optimizer state, step counter and RNG; `ema_params` is None without EMA."""

    step: jax.Array
    params: Any
    opt_state: optax.OptState
    rng: jax.Array
    ema_params: Any = None
