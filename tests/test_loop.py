"""The generic loop with a toy stage: non-finite skipping, stopping, checkpoint fallback."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dalle2_jax import config_schema
from dalle2_jax.nn import axes
from dalle2_jax.stages.base import Stage
from dalle2_jax.training import checkpoint as checkpoint_lib
from dalle2_jax.training.loop import NonFiniteError, train_and_evaluate


class _Linear(nn.Module):
    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.zeros, (axes.EMBED, axes.MLP)),
                            (4, 8))
        return x @ kernel


class ToyStage(Stage):
    """Least squares y = x @ W*; examples whose index is in `nan_examples` carry NaN inputs."""

    def __init__(self, num_examples: int = 64, nan_examples: tuple[int, ...] = ()):
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(num_examples, 4)).astype(np.float32)
        self.x[list(nan_examples)] = np.nan
        self.y = self.x @ rng.normal(size=(4, 8)).astype(np.float32)
        self.model = _Linear()

    def init_params(self, rng):
        return self.model.init(rng, jnp.zeros((1, 4)))["params"]

    def loss(self, params, batch, rng, frozen):
        del rng, frozen
        error = self.model.apply({"params": params}, batch["x"]) - batch["y"]
        return jnp.mean(error**2), {}

    def train_data(self):
        return list(range(len(self.x))), lambda i: {"x": self.x[i], "y": self.y[i]}

    def evaluate(self, params, infer):
        out = infer(lambda p, b: self.model.apply({"params": p}, b["x"]), params, {"x": self.x[:5]})
        return {"mse": float(np.mean((out - self.y[:5]) ** 2))}


def toy_config(**train):
    config = config_schema.base_config()
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.data.num_threads = 1
    config.optim.learning_rate = 0.1
    config.optim.warmup_steps = 0
    config.optim.schedule = "constant"
    config.train.update(dict(num_steps=8, log_every=1, eval_every=100, checkpoint_every=4), **train)
    return config


def read_metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_toy_stage_learns_and_evaluates(tmp_path):
    state, metrics = train_and_evaluate(toy_config(num_steps=30), str(tmp_path), ToyStage())
    losses = [m["train/loss"] for m in read_metrics(tmp_path) if "train/loss" in m]
    assert losses[-1] < 0.2 * losses[0]
    assert metrics["eval/mse"] < losses[0]
    assert int(state.step) == 30
    assert (tmp_path / "checkpoints" / "30").exists()


def test_profile_traces_the_steps_asked_for(tmp_path):
    train_and_evaluate(toy_config(num_steps=6, profile_steps=2, profile_from_step=3), str(tmp_path), ToyStage())
    traces = list((tmp_path / "profile").glob("plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1
    names = {event.name for plane in jax.profiler.ProfileData.from_file(str(traces[0])).planes
             for line in plane.lines for event in line.events}
    assert any("train_step" in name for name in names), sorted(names)[:20]


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    # With one NaN example among 64 and batches of 8 from a shuffled order, some steps see it.
    stage = ToyStage(nan_examples=(3,))
    state, _ = train_and_evaluate(toy_config(num_steps=16), str(tmp_path), stage)
    records = [m for m in read_metrics(tmp_path) if "train/skipped_steps" in m]
    skipped = records[-1]["train/skipped_steps"]
    assert 1 <= skipped < 16
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.params))


def test_run_stops_after_too_many_nonfinite_steps(tmp_path):
    stage = ToyStage(nan_examples=tuple(range(64)))
    with pytest.raises(NonFiniteError, match="max_nonfinite_in_a_row=3"):
        train_and_evaluate(toy_config(num_steps=50, max_nonfinite_in_a_row=3), str(tmp_path), stage)


def test_damaged_latest_checkpoint_falls_back_to_previous(tmp_path):
    train_and_evaluate(toy_config(num_steps=8), str(tmp_path), ToyStage())
    # Flip one byte in every data file of the newest checkpoint's state: orbax would restore it
    # silently; the checksum must catch it.
    damaged = 0
    for path in (tmp_path / "checkpoints" / "8" / "state").rglob("*"):
        if path.is_file() and "d" in path.parent.name and path.stat().st_size > 0:
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
            damaged += 1
    assert damaged
    state, _ = train_and_evaluate(toy_config(num_steps=8), str(tmp_path), ToyStage())
    # It restored step 4 (the fallback) and trained steps 5..8 a second time.
    assert int(state.step) == 8
    steps = [m["step"] for m in read_metrics(tmp_path) if "train/loss" in m]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 5, 6, 7, 8]


def test_all_checkpoints_damaged_refuses_to_start_over(tmp_path):
    checkpointer = checkpoint_lib.Checkpointer(tmp_path, keep=2, use_async=False)
    assert checkpointer.restore_latest({}, None) is None
    (tmp_path / "7").mkdir()  # a finished-looking step with nothing in it
    checkpointer = checkpoint_lib.Checkpointer(tmp_path, keep=2, use_async=False)
    with pytest.raises(checkpoint_lib.CheckpointError, match="refusing to start over"):
        checkpointer.restore_latest({"w": jax.ShapeDtypeStruct((2,), jnp.float32)}, None)


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    # The toy loss is a mean over examples, so two microbatches of 4 give the same gradient as
    # one batch of 8 (up to float rounding), hence the same parameters.
    full, _ = train_and_evaluate(toy_config(num_steps=4), str(tmp_path / "full"), ToyStage())
    accumulated, _ = train_and_evaluate(toy_config(num_steps=4, grad_accum_steps=2), str(tmp_path / "accum"),
                                        ToyStage())
    np.testing.assert_allclose(accumulated.params["kernel"], full.params["kernel"], rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(full.params["kernel"])).sum() > 0
    # Adam hides a mis-scaled gradient; the reported loss (accumulated the same way) does not.
    losses = [[m["train/loss"] for m in read_metrics(tmp_path / name) if "train/loss" in m]
              for name in ("full", "accum")]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_ema_params_trail_the_params(tmp_path):
    config = toy_config(num_steps=6)
    config.optim.ema_decay = 0.5
    state, _ = train_and_evaluate(config, str(tmp_path), ToyStage())
    params, ema = np.asarray(state.params["kernel"]), np.asarray(state.ema_params["kernel"])
    # Initial params are zeros and move steadily, so the average lags behind but is not zero.
    assert 0 < np.abs(ema).sum() < np.abs(params).sum()
