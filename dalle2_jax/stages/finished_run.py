"""A finished training run on disk: its config and final parameters, for the stages and the sampler."""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from dalle2_jax.parallel.mesh import ConfigError


def load_finished_run(workdir: str, field: str, stage: str) -> tuple[ml_collections.ConfigDict, Any]:
    """(config, parameters as host arrays) of the `stage` run in `workdir`; the EMA ones if it kept them.

    Raises ConfigError naming `field` (the flag or config field that named the directory) when the
    directory is not a run of that stage or its final checkpoint is missing or half-written.
    """
    path = epath.Path(workdir)
    if not workdir or not (path / "config.json").exists():
        raise ConfigError(f"{field}={workdir!r}: not a {stage} run (no config.json); train the {stage} stage first")
    config = ml_collections.ConfigDict(json.loads((path / "config.json").read_text()))
    if config.stage != stage:
        raise ConfigError(f"{field}={workdir!r} is a {config.stage!r} run, not a {stage!r} run")
    wanted = config.train.num_steps
    steps = ocp.CheckpointManager(path.absolute() / "checkpoints").all_steps()
    if wanted not in steps:
        raise ConfigError(f"{field}={workdir!r}: the {stage} run has not finished (finished checkpoints "
                          f"{sorted(steps)}, train.num_steps={wanted}); rerun its training command to finish it")
    state_dir = path.absolute() / "checkpoints" / str(wanted) / "state"
    try:
        checkpointer = ocp.StandardCheckpointer()
        # Restore onto one local device whatever mesh saved it: a run trained on 2 CPU devices
        # must load in a 1-device process (or on a GPU), and Orbax refuses a topology change
        # unless it is given a target.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        # The handler's metadata: the checkpointer's also looks for a step-level metadata file,
        # which the training loop's CheckpointManager keeps one directory up, and warns.
        target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                              ocp.StandardCheckpointHandler().metadata(state_dir))
        state = checkpointer.restore(state_dir, target)
    except Exception as e:  # noqa: BLE001 - Orbax raises assorted errors for damaged files
        raise ConfigError(f"{field}={workdir!r}: the final checkpoint (step {wanted}) cannot be read: {e}") from None
    params = state["ema_params"] if state.get("ema_params") is not None else state["params"]
    # Host arrays: the restored ones live on the devices the run was saved from, which need not
    # be the devices (or mesh) of the process loading it; jit places host arrays where it runs.
    return config, jax.device_get(params)
