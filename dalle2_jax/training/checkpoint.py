"""Orbax checkpoints of the train state, the data iterator position and a checksum.

Each saved step holds three items: `state` (the sharded TrainState), `data` (the grain
iterator's state, so a resumed run reads exactly the batches the uninterrupted run would have)
and `meta` (step and a per-leaf checksum). Orbax ignores half-written steps, but a finished step
whose files were damaged later can still be listed, fail to restore, or restore silently with
wrong bytes; restore therefore verifies the checksum and falls back to the previous step.
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath


class CheckpointError(RuntimeError):
    """No usable checkpoint although some exist: refuses to start over and overwrite them."""


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """Sum of the leaf's bits as uint32 words (wrapping); any flipped bit changes it."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size == 8:
        words = jax.lax.bitcast_convert_type(x, jnp.uint32)
    else:
        words = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size])
    return jnp.sum(words.astype(jnp.uint32), dtype=jnp.uint32)


@jax.jit
def state_checksum(state: Any) -> list[jax.Array]:
    """One uint32 per leaf of `state`, computed where the leaves live (no host gather)."""
    return [_leaf_checksum(x) for x in jax.tree.leaves(state)]


def _checksum_list(state: Any) -> list[int]:
    return [int(v) for v in jax.device_get(state_checksum(state))]


class Checkpointer:
    """Saves and restores (state, data iterator) pairs under `directory`, keeping the newest few."""

    def __init__(self, directory: str | epath.Path, keep: int, use_async: bool = True):
        self.directory = epath.Path(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=use_async, create=True
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: Any) -> None:
        """Starts saving `state` and the iterator position as `step` (async where enabled)."""
        meta = {"step": int(step), "checksum": _checksum_list(state)}
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore_latest(self, abstract_state: Any, data_iterator: Any) -> tuple[Any, int] | None:
        """Restores the newest step that loads and matches its checksum, into `data_iterator`.

        `abstract_state` is a tree of `jax.ShapeDtypeStruct`s with shardings. Returns None when
        there is no checkpoint; raises CheckpointError when there are some but none is usable.
        """
        steps = self.all_steps()
        for step in reversed(steps):
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=grain.checkpoint.CheckpointRestore(data_iterator),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as e:  # noqa: BLE001 - orbax raises many kinds on damaged files
                self._set_aside(step, f"does not restore ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
                continue
            if _checksum_list(restored.state) != restored.meta["checksum"]:
                self._set_aside(step, "fails its checksum")
                continue
            return restored.state, step
        if steps:
            raise CheckpointError(
                f"{self.directory}: checkpoints {steps} exist but none restores intact; "
                "refusing to start over on top of them (move them away to start fresh)"
            )
        return None

    def _set_aside(self, step: int, reason: str) -> None:
        """Moves a damaged step out of the way (never deletes it) so training can redo it."""
        aside = self.directory.parent / f"{self.directory.name}_damaged"
        aside.mkdir(parents=True, exist_ok=True)
        target = aside / str(step)
        suffix = 1
        while target.exists():
            target, suffix = aside / f"{step}.{suffix}", suffix + 1
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(target)
        self._manager.reload()
        logging.warning("Checkpoint step %d %s: moved to %s; trying the one before.", step, reason, target)

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
