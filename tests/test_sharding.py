"""Data-parallel and FSDP meshes on 8 simulated CPU devices train like one device."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dalle2_jax.stages import make_stage
from dalle2_jax.training.loop import train_and_evaluate
from tests.tiny import tiny_clip_config


def train_tiny_clip(data_dir, workdir, mesh: tuple[int, int, int], devices):
    config = tiny_clip_config(
        data_dir, **{"mesh.data": mesh[0], "mesh.fsdp": mesh[1], "mesh.tensor": mesh[2],
                     "train.num_steps": 3, "train.eval_every": 1000, "train.checkpoint_every": 1000,
                     "data.eval_limit": 32})
    state, _ = train_and_evaluate(config, str(workdir), make_stage(config), devices=devices)
    return state.params


@pytest.fixture(scope="module")
def single_device_params(shapes_data_dir, tmp_path_factory):
    return jax.device_get(train_tiny_clip(shapes_data_dir, tmp_path_factory.mktemp("one"), (1, 1, 1),
                                          jax.devices()[:1]))


@pytest.mark.parametrize("mesh", [(8, 1, 1), (1, 8, 1), (2, 2, 2)])
def test_sharded_training_matches_one_device(mesh, single_device_params, shapes_data_dir, tmp_path):
    assert jax.device_count() == 8
    sharded = train_tiny_clip(shapes_data_dir, tmp_path, mesh, jax.devices())
    if mesh[1] > 1:  # FSDP: the big matrices really are split, not replicated
        split = [x for x in jax.tree.leaves(sharded) if x.ndim == 2 and x.sharding.shard_shape(x.shape) != x.shape]
        assert len(split) >= 4
    params = jax.device_get(sharded)
    reference = jax.tree.leaves_with_path(single_device_params)
    for (path, expected), actual in zip(reference, jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    # Something actually trained: parameters moved away from their initial values.
    assert any(np.abs(leaf).sum() > 0 for leaf in jax.tree.leaves(params))
