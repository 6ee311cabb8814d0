"""Orbax checkpoints of the train state, the data iterator position and a checksum.

Each saved step holds three items: `state` (the sharded TrainState), `data` (the grain
iterator's state, so a resumed run reads exactly the batches the uninterrupted run would have)
and `meta` (step and a per-leaf checksum). Orbax ignores half-written steps, but a finished step
whose files were damaged later can still be listed, fail to restore, or restore silently with
wrong bytes; restore therefore verifies the checksum and falls back to the previous step.
"""

from __future__ import annotations

import json
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from dalle2_jax.parallel import distributed


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


def restore_data_position(directory: epath.Path, data_iterator: Any) -> None:
    """Sets `data_iterator` to the position saved in a step's `data` item (grain's handler wrote
    one JSON file per host), also when another number of hosts wrote it.

    Every host's iterator stands at the same position, the number of global batches read (see
    `data.pipeline.train_iterator`), so where this host's own file is absent host 0's file
    gives the same position.
    """
    own = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    written = own if own.exists() else min(directory.glob("process_0-of-*.json"), default=own)
    data_iterator.set_state(json.loads(written.read_text()))
    data_iterator.start_prefetch()


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
                        meta=ocp.args.JsonRestore(),
                    ),
                )
                restore_data_position(self.directory / str(step) / "data", data_iterator)
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
        if distributed.is_chief():
            (self.directory / str(step)).rename(target)
        distributed.barrier(f"checkpoint {step} set aside")  # every host then lists the same steps
        self._manager.reload()
        logging.warning("Checkpoint step %d %s: moved to %s; trying the one before.", step, reason, target)

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
