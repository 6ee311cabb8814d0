"""What the training loop needs from a stage; stages know nothing of meshes or optimizers."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

# Runs fn(params, batch) -> arrays over host arrays in sharded global batches (see loop.Inference).
InferFn = Callable[[Callable[[Any, Mapping[str, jax.Array]], Any], Any, Mapping[str, np.ndarray]], Any]


class Stage(abc.ABC):
    """One trainable part of unCLIP."""

    def prepare(self, infer: InferFn) -> None:  # noqa: B027 - most stages need no preparation
        """One-time work that runs models before training (e.g. precomputing CLIP embeddings)."""

    def frozen_params(self) -> Any:
        """Parameters of a model the loss uses but never trains (e.g. CLIP), or None."""
        return None

    @abc.abstractmethod
    def init_params(self, rng: jax.Array) -> Any:
        """Parameters boxed with their logical axis names (`nn.with_logical_partitioning`)."""

    @abc.abstractmethod
    def loss(
        self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array, frozen: Any
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar training loss and scalar metrics for one global batch (`frozen`: see above)."""

    @abc.abstractmethod
    def train_data(self) -> tuple[Any, Callable[[Mapping[str, Any]], dict[str, np.ndarray]]]:
        """A random-access source of training examples and the per-example transform."""

    @abc.abstractmethod
    def evaluate(self, params: Any, infer: InferFn) -> dict[str, float | np.ndarray]:
        """Evaluation metrics, computed with `infer` for everything that runs the model; uint8
        [H, W, 3] arrays among them are pictures (sample grids), which the loop writes to
        TensorBoard and to `WORKDIR/samples/NAME_STEP.png`."""
