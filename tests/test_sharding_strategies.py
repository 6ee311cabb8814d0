"""Every stage trains the same on 8 simulated CPU devices, whatever the mesh and strategy.

Each case trains a tiny stage for 2 steps on a mesh of jax.devices() and compares loss and
parameters with the same run on jax.devices()[:1]. The full stage x mesh matrix is slow (one
compile per case); the default run keeps one mesh per stage, (2, 2, 2) among them.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from dalle2_jax.stages import make_stage
from dalle2_jax.training import checkpoint
from dalle2_jax.training.loop import train_and_evaluate
from tests.tiny import (
    TINY_DECODER_OVERRIDES,
    TINY_PRIOR_OVERRIDES,
    TINY_UPSAMPLER_OVERRIDES,
    tiny_clip_config,
    tiny_stage_config,
)

SHORT = {"train.num_steps": 2, "train.log_every": 2, "train.eval_every": 1000,
         "train.checkpoint_every": 1000, "optim.ema_decay": 0.0, "train.peak_flops_per_device": 1e11}
# Mesh (data, fsdp, tensor) -> the strategy that uses all of its axes.
STRATEGY = {(8, 1, 1): "dp", (1, 8, 1): "fsdp", (2, 4, 1): "fsdp", (2, 2, 2): "fsdp_tp"}
DEFAULT_CASES = {("clip", (2, 4, 1)), ("prior", (1, 8, 1)), ("decoder", (2, 2, 2)), ("upsampler", (8, 1, 1)),
                 ("clip", (2, 2, 2))}


@pytest.fixture(autouse=True)
def no_checkpoint_writes(monkeypatch):
    """The final checkpoint of an 8-device state takes ~10 s here; checkpoints are tested elsewhere."""
    monkeypatch.setattr(checkpoint.Checkpointer, "save", lambda self, step, state, data_iterator: None)


def stage_config(stage: str, data_dir: str, clip_workdir: str, embeddings_dir: str, **fields):
    """The tiny config of `stage` for a short run without evaluation."""
    fields = {**SHORT, **fields}
    if stage == "clip":
        return tiny_clip_config(data_dir, **fields)
    overrides = {"prior": TINY_PRIOR_OVERRIDES, "decoder": TINY_DECODER_OVERRIDES,
                 "upsampler": TINY_UPSAMPLER_OVERRIDES}[stage]
    config = tiny_stage_config(f"configs/shapes/{stage}.py", data_dir, overrides, **fields)
    if stage in ("prior", "decoder"):
        config.clip.workdir = clip_workdir
    if stage == "prior":
        config.prior.embeddings_dir = embeddings_dir
    return config


def train(config, workdir, devices) -> tuple[dict, list[dict]]:
    """Final parameters (on the host) and metrics.jsonl records of a run without evaluation."""
    stage = make_stage(config)
    stage.evaluate = lambda params, infer: {}  # compile the train step only
    state, _ = train_and_evaluate(config, str(workdir), stage, devices=devices)
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return jax.device_get(state.params), records


def metric(records: list[dict], name: str) -> float:
    return next(r[name] for r in records if name in r)


@pytest.fixture(scope="module")
def runner(shapes_data_dir, clip_workdir, tmp_path_factory):
    """Runs (stage, mesh, fields) once; the 1-device reference of each stage is shared."""
    root = tmp_path_factory.mktemp("strategies")
    cache = {}

    def run(stage: str, mesh: tuple[int, int, int], **fields):
        key = (stage, mesh, tuple(sorted(fields.items())))
        if key not in cache:
            config = stage_config(stage, shapes_data_dir, clip_workdir, str(root / "prior_embeddings"), **{
                "mesh.data": mesh[0], "mesh.fsdp": mesh[1], "mesh.tensor": mesh[2],
                "sharding.strategy": STRATEGY.get(mesh, "fsdp_tp"), **fields})
            workdir = root / f"run{len(cache)}"
            cache[key] = train(config, workdir, jax.devices()[:int(np.prod(mesh))])
        return cache[key]

    return run


def assert_same_training(actual, reference, label: str, rtol: float = 2e-4, atol: float = 2e-5) -> None:
    (params, records), (expected_params, expected_records) = actual, reference
    np.testing.assert_allclose(metric(records, "train/loss"), metric(expected_records, "train/loss"),
                               rtol=rtol, err_msg=f"{label} loss")
    for (path, expected), value in zip(jax.tree.leaves_with_path(expected_params), jax.tree.leaves(params),
                                       strict=True):
        np.testing.assert_allclose(value, expected, rtol=rtol, atol=atol,
                                   err_msg=f"{label} {jax.tree_util.keystr(path)}")


CASES = [pytest.param(stage, mesh, id=f"{stage}-{'x'.join(map(str, mesh))}",
                      marks=() if (stage, mesh) in DEFAULT_CASES else pytest.mark.slow)
         for stage in ("clip", "prior", "decoder", "upsampler") for mesh in STRATEGY]


@pytest.mark.parametrize("stage,mesh", CASES)
def test_mesh_trains_like_one_device(stage, mesh, runner):
    assert jax.device_count() == 8
    sharded = runner(stage, mesh)
    assert_same_training(sharded, runner(stage, (1, 1, 1)), f"{stage} on {mesh}")
    # The loss went down the same way on both, and throughput was accounted for.
    records = sharded[1]
    assert metric(records, "model_flops_per_step") > 0
    assert 0 < metric(records, "train/mfu") == pytest.approx(metric(records, "train/flops_per_sec_per_device") / 1e11)


def test_fsdp_shrinks_per_device_state_to_about_one_eighth(shapes_data_dir, tmp_path):
    """Parameter + optimizer bytes per device from the compiled step's memory analysis: FSDP over
    8 devices against data parallelism (replicated state) on the same 8 devices."""
    wide = {"model.embed_dim": 64, "model.vision.width": 64, "model.text.width": 64}
    figures = {}
    for mesh, strategy in (((8, 1, 1), "dp"), ((1, 8, 1), "fsdp")):
        config = tiny_clip_config(shapes_data_dir, **{**SHORT, **wide, "train.num_steps": 1, "mesh.data": mesh[0],
                                                       "mesh.fsdp": mesh[1], "sharding.strategy": strategy})
        _, records = train(config, tmp_path / strategy, jax.devices())
        figures[strategy] = {name: metric(records, f"memory/{name}_bytes_per_device") for name in ("argument", "state")}
    argument_ratio = figures["fsdp"]["argument"] / figures["dp"]["argument"]
    state_ratio = figures["fsdp"]["state"] / figures["dp"]["state"]
    print(f"FSDP/DP per-device bytes over 8 devices: compiled arguments {argument_ratio:.3f}, "
          f"train state {state_ratio:.3f} (1/8 = 0.125)")
    # Norm scales, biases and the batch stay replicated or batch-split: a little above 1/8.
    assert 0.125 <= state_ratio < 0.15
    assert 0.125 <= argument_ratio < 0.16


def test_remat_policies_and_bfloat16_train_on_a_sharded_mesh(runner):
    """Rematerialisation changes memory, not the numbers; bfloat16 compute keeps float32 params."""
    reference = runner("prior", (1, 1, 1))
    for policy in ("full", "dots_saveable"):
        assert_same_training(runner("prior", (2, 2, 2), **{"model.remat": policy}), reference, f"remat={policy}")
    params, records = runner("prior", (2, 2, 2), dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype("float32")}
    np.testing.assert_allclose(metric(records, "train/loss"), metric(reference[1], "train/loss"), rtol=0.05)


def test_gradient_accumulation_on_a_fsdp_mesh_matches_one_device(runner):
    """Microbatches scanned inside the sharded step (gradients kept sharded) add up as on one
    device; that they equal one big batch is test_loop's (the diffusion noise differs per microbatch)."""
    accumulate = {"train.grad_accum_steps": 2}
    assert_same_training(runner("prior", (2, 4, 1), **accumulate), runner("prior", (1, 1, 1), **accumulate),
                         "grad_accum_steps=2 on (2, 4, 1)")


def test_scanned_layers_train_on_a_fsdp_tp_mesh_like_one_device(runner):
    """Stacked blocks (a leading `layers` axis, never split) shard and train as on one device."""
    scanned = {"model.scan_layers": True, "model.vision.depth": 2, "model.text.depth": 2}
    params, records = runner("clip", (2, 2, 2), **scanned)
    assert params["vision"]["transformer"]["blocks"]["mlp"]["fc_in"]["kernel"].shape[0] == 2
    assert_same_training((params, records), runner("clip", (1, 1, 1), **scanned), "scan_layers on (2, 2, 2)")
