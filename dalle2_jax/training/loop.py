"""The generic training loop: sharded jitted steps, checkpoints, metrics, evaluation, preemption.

The loop knows no model. A stage (see `dalle2_jax.stages.base.Stage`) supplies parameters,
the loss, the training examples and an evaluation; the loop supplies everything else:
the mesh and shardings from the config, the optimizer, exact resume, SIGTERM handling, skipping
of non-finite updates, metric writing and FLOP/s accounting.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import periodic_actions
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from dalle2_jax import images
from dalle2_jax.data import pipeline
from dalle2_jax.parallel import distributed, host_cpu, sharding
from dalle2_jax.parallel import mesh as mesh_lib
from dalle2_jax.parallel import rules as rules_lib
from dalle2_jax.stages.base import Stage
from dalle2_jax.training import checkpoint as checkpoint_lib
from dalle2_jax.training import metrics as metrics_lib
from dalle2_jax.training import optim, placement, throughput
from dalle2_jax.training.state import TrainState


class NonFiniteError(RuntimeError):
    """The loss or gradients stayed non-finite for too many steps in a row."""


def _microbatches(batch: Any, count: int) -> Any:
    """[B, ...] -> [count, B / count, ...], taking every `count`-th example so that each
    microbatch stays spread over all data shards."""

    def split(x):
        x = x.reshape(x.shape[0] // count, count, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def make_train_step(stage: Stage, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    train_cfg: ml_collections.ConfigDict, ema_decay: float, param_shardings: Any = None) -> Callable:
    """The pure step function (state, batch, frozen) -> (state, metrics) for `jax.jit`; `frozen` is
    the stage's frozen parameters (or None), an input of the step that is never trained.
    `param_shardings` (optional) keeps the accumulated gradients sharded like the parameters."""
    accum = train_cfg.grad_accum_steps
    grad_fn = jax.value_and_grad(stage.loss, has_aux=True)

    def gradients(params, batch, rng, frozen):
        if accum == 1:
            (loss, aux), grads = grad_fn(params, batch, rng, frozen)
            return loss, aux, grads

        def body_shapes(params, micro, rng):
            (loss, aux), grads = grad_fn(params, jax.tree.map(lambda x: x[0], micro), rng, frozen)
            return loss, aux, grads

        def body(carry, xs):
            micro, index = xs
            (loss, aux), grads = grad_fn(params, micro, jax.random.fold_in(rng, index), frozen)
            return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

        micro = _microbatches(batch, accum)
        shapes = jax.eval_shape(lambda: body_shapes(params, micro, rng))
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        if param_shardings is not None:  # under FSDP, never a replicated gradient buffer
            zeros = (*zeros[:2], jax.lax.with_sharding_constraint(zeros[2], param_shardings))
        total, _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
        return jax.tree.map(lambda x: x / accum, total)

    def train_step(state: TrainState, batch: Any, frozen: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        loss, aux, grads = gradients(state.params, batch, rng, frozen)
        # A non-finite loss with finite gradients must not slip through apply_if_finite.
        grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(loss), g, jnp.nan), grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = opt_state.last_finite
        ema_params = state.ema_params
        if ema_params is not None:
            # Warmup (as TensorFlow's ExponentialMovingAverage with num_updates): early on the
            # average must not be dominated by the random initialisation.
            decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
            ema_params = jax.tree.map(
                lambda e, p: jnp.where(finite, decay * e + (1.0 - decay) * p, e), ema_params, params)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  ema_params=ema_params)
        metrics = {
            "loss": loss,
            **aux,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(state.step),
            "nonfinite_in_a_row": opt_state.notfinite_count,
            "skipped_steps": opt_state.total_notfinite,
        }
        return new_state, metrics

    return train_step


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks after each step (main thread only)."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint after this step, then stopping.")
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def initial_state_fn(stage: Stage, tx: optax.GradientTransformation, ema_decay: float,
                     train_rng: jax.Array) -> Callable[[jax.Array], TrainState]:
    """`make_state(init_rng)`: a fresh train state (the stage's initial parameters, the optimizer's
    state, the training RNG and, with EMA, a copy of the parameters); jit or eval_shape it."""
    def make_state(rng: jax.Array) -> TrainState:
        params = sharding.unbox_abstract(stage.init_params(rng))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=jax.random.key_data(train_rng), ema_params=params if ema_decay > 0 else None)

    return make_state


def jit_train_step(train_step: Callable, state_shardings: Any, batch_sharding: Any) -> Callable:
    """`train_step(state, batch, frozen)` jitted as the loop runs it: the state sharded by its
    specs and donated, the batch over the batch axes, frozen parameters where they are placed; on
    the CPU with its convolutions on Eigen (`parallel/host_cpu.py`)."""
    return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding, None),
                   out_shardings=(state_shardings, None), donate_argnums=(0,),
                   compiler_options=host_cpu.training_compiler_options(
                       next(iter(batch_sharding.device_set)).platform))


def state_specs(stage: Stage, tx: optax.GradientTransformation, abstract_state: TrainState,
                 init_rng: jax.Array) -> TrainState:
    """Logical PartitionSpecs of every state leaf: parameters (and their EMA) by the names the
    model gave them, optimizer moments like their parameters, counters and RNG replicated."""
    param_specs = sharding.logical_specs(jax.eval_shape(stage.init_params, init_rng))
    opt_specs = optax.tree_map_params(
        tx, lambda _, spec: spec, abstract_state.opt_state, param_specs,
        transform_non_params=lambda _: PartitionSpec(), is_leaf=lambda x: isinstance(x, PartitionSpec))
    return TrainState(step=PartitionSpec(), params=param_specs, opt_state=opt_specs, rng=PartitionSpec(),
                      ema_params=None if abstract_state.ema_params is None else param_specs)


class Inference:
    """Runs a jitted function over host-resident arrays in global batches (evaluation, and
    stages' preparation work such as precomputing CLIP embeddings).

    Every host passes the same full arrays; batches are padded to the global batch size, run
    sharded over the mesh's batch axes, and gathered back to numpy. Parameters are used where
    they already live (the train state's shardings, or replicated for a frozen model).
    """

    def __init__(self, batch_sharding, batch_size: int):
        self._batch_sharding = batch_sharding
        self._batch_size = batch_size
        self._jitted: dict[Callable, Callable] = {}

    def __call__(self, fn: Callable, params: Any, arrays: dict[str, np.ndarray]) -> Any:
        if fn not in self._jitted:
            self._jitted[fn] = jax.jit(fn, in_shardings=(None, self._batch_sharding))
        jitted = self._jitted[fn]
        n = len(next(iter(arrays.values())))
        bs = self._batch_size
        outputs = []
        for start in range(0, n, bs):
            chunk = {k: v[start:start + bs] for k, v in arrays.items()}
            real = len(next(iter(chunk.values())))
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], bs - real, axis=0)]) if real < bs else v
                     for k, v in chunk.items()}
            device_chunk = {
                k: jax.make_array_from_callback(v.shape, self._batch_sharding, lambda idx, v=v: v[idx])
                for k, v in chunk.items()
            }
            out = multihost_utils.process_allgather(jitted(params, device_chunk), tiled=True)
            outputs.append(jax.tree.map(lambda x, real=real: np.asarray(x)[:real], out))
        return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, stage: Stage,
                       devices: Sequence[jax.Device] | None = None) -> tuple[TrainState, dict[str, float]]:
    """Trains `stage` as `config` says, in `workdir`, resuming from its latest checkpoint.

    `devices` (default: all) are the devices the mesh spans. Returns the final train state and
    the last evaluation's metrics.
    """
    # Orbax needs absolute paths; remote paths (gs://...) are absolute already.
    workdir = epath.Path(workdir if "://" in str(workdir) else os.path.abspath(workdir))
    train_cfg = config.train
    num_steps = train_cfg.num_steps
    is_chief = distributed.is_chief()
    rules = rules_lib.rules_for_config(config)
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    logging.info("Mesh %s over %d devices (%s).", dict(mesh.shape), mesh.size, jax.devices()[0].platform)

    tx, schedule = optim.make_optimizer(config.optim, num_steps)
    ema_decay = config.optim.ema_decay
    init_rng, train_rng, data_rng = jax.random.split(jax.random.key(config.seed), 3)
    data_seed = int(jax.random.randint(data_rng, (), 0, 2**31 - 1))

    make_state = initial_state_fn(stage, tx, ema_decay, train_rng)

    writer = metrics_lib.make_writer(workdir, is_chief)
    checkpointer = checkpoint_lib.Checkpointer(
        workdir / "checkpoints", keep=train_cfg.keep_checkpoints, use_async=train_cfg.async_checkpointing)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    # Before entering the mesh: on CPU this measures a matmul on devices of its own choosing.
    peak_per_device = throughput.peak_flops_per_device(mesh.devices.flat[0], train_cfg.peak_flops_per_device)

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract_state = jax.eval_shape(make_state, init_rng)
        state_shardings = sharding.mesh_shardings(
            state_specs(stage, tx, abstract_state, init_rng), mesh, rules, abstract_state)
        placement.check_params_sharded(abstract_state.params, state_shardings.params, config)
        num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state.params))
        state_bytes = placement.state_bytes_per_device(abstract_state, state_shardings)
        logging.info("Parameters: %s (%.1f M); train state %.1f MiB per device (sharding.strategy=%s).",
                     f"{num_params:,}", num_params / 1e6, state_bytes / 2**20, config.sharding.strategy)

        infer = Inference(batch_sharding, config.data.eval_batch_size)
        stage.prepare(infer)
        # Host 0 writes what `prepare` computes (the prior's embeddings); every host then reads it.
        distributed.barrier(f"{workdir} prepared")
        source, transform = stage.train_data()
        data_iterator = pipeline.train_iterator(
            source, transform, config.data.batch_size, data_seed,
            num_threads=config.data.num_threads, prefetch=config.data.prefetch)

        target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                              abstract_state, state_shardings)
        restored = checkpointer.restore_latest(target, data_iterator)
        if restored is None:
            state = jax.jit(make_state, out_shardings=state_shardings)(init_rng)
            logging.info("Starting from scratch in %s.", workdir)
        else:
            state, step = restored
            logging.info("Resumed from the checkpoint of step %d in %s.", step, workdir)
        step = int(state.step)

        eval_metrics: dict[str, float] = {}

        def evaluate(at_step: int) -> dict[str, float]:
            started = time.perf_counter()
            params = state.ema_params if state.ema_params is not None else state.params
            outputs = stage.evaluate(params, infer)
            pictures = {k: v for k, v in outputs.items() if isinstance(v, np.ndarray) and v.ndim == 3}
            result = {f"eval/{k}": float(v) for k, v in outputs.items() if k not in pictures}
            result["eval/seconds"] = time.perf_counter() - started
            writer.write_scalars(at_step, result)
            if pictures:
                writer.write_images(at_step, {f"eval/{k}": v[None] for k, v in pictures.items()})
                if is_chief:
                    samples_dir = epath.Path(workdir) / "samples"
                    samples_dir.mkdir(parents=True, exist_ok=True)
                    for name, picture in pictures.items():
                        images.write_png(samples_dir / f"{name}_{at_step:07d}.png", picture)
            writer.flush()
            return result

        if step >= num_steps:
            logging.info("Already trained for %d steps (train.num_steps=%d).", step, num_steps)
            eval_metrics = evaluate(step)
            checkpointer.close()
            writer.close()
            return state, eval_metrics

        train_step = make_train_step(stage, tx, schedule, train_cfg, ema_decay, state_shardings.params)
        first_batch = sharding.global_batch(next(data_iterator), batch_sharding)
        frozen = stage.frozen_params()
        if frozen is not None:  # replicated: a frozen model the size of the trained one would need specs
            frozen = jax.device_put(frozen, jax.sharding.NamedSharding(mesh, PartitionSpec()))
        started = time.perf_counter()
        traced = jit_train_step(train_step, state_shardings, batch_sharding).trace(state, first_batch, frozen)
        compiled = traced.lower().compile()
        # XLA counts a loop body once (scanned layers, gradient-accumulation microbatches): the
        # other iterations' matmul FLOPs come from the step's jaxpr (see `throughput`).
        flops_per_device = throughput.cost_flops(compiled) + throughput.repeated_loop_flops(traced.jaxpr) / mesh.size
        memory = placement.compiled_memory(compiled)
        logging.info("Compiled the train step in %.1f s: %.3g model FLOPs per step (%.3g per device, "
                     "peak %.3g FLOP/s per device); memory per device: %s.", time.perf_counter() - started,
                     flops_per_device * mesh.size, flops_per_device, peak_per_device,
                     {k: f"{v / 2**20:.1f} MiB" for k, v in memory.items()})
        if is_chief:
            writer.write_scalars(step, {"model_flops_per_step": flops_per_device * mesh.size,
                                        "num_params": float(num_params), "peak_flops_per_device": peak_per_device,
                                        "memory/state_bytes_per_device": float(state_bytes), **memory})

        timer = metrics_lib.StepTimer(step, num_steps)
        # Every process traces its own devices (TensorBoard's Profile tab shows one host at a time).
        profile = periodic_actions.Profile(
            logdir=str(workdir / "profile"), num_profile_steps=train_cfg.profile_steps, profile_duration_ms=None,
            first_profile=train_cfg.profile_from_step, every_secs=None) if train_cfg.profile_steps else None
        pending: list[dict[str, jax.Array]] = []
        previous_metrics = None
        batch = first_batch
        with _SigtermFlag() as sigterm:
            while step < num_steps:
                if batch is None:
                    batch = sharding.global_batch(next(data_iterator), batch_sharding)
                state, step_metrics = compiled(state, batch, frozen)
                batch = None
                step += 1
                pending.append(step_metrics)
                # Read the previous step's counter, so one step stays in flight.
                if previous_metrics is not None:
                    in_a_row = int(previous_metrics["nonfinite_in_a_row"])
                    if in_a_row >= train_cfg.max_nonfinite_in_a_row:
                        raise NonFiniteError(
                            f"loss or gradients non-finite for {in_a_row} steps in a row before step "
                            f"{step} (train.max_nonfinite_in_a_row={train_cfg.max_nonfinite_in_a_row}); "
                            f"stopping. Checkpoints in {checkpointer.directory} are untouched.")
                previous_metrics = step_metrics
                if profile is not None:
                    profile(step)

                if step % train_cfg.log_every == 0 or step == num_steps:
                    host = jax.device_get(pending)
                    scalars = {f"train/{k}": float(np.mean([m[k] for m in host])) for k in host[0]}
                    scalars["train/skipped_steps"] = float(host[-1]["skipped_steps"])
                    scalars.update({f"train/{k}": v for k, v in timer.tick(step).items()})
                    scalars.update({f"train/{k}": v for k, v in throughput.throughput_metrics(
                        flops_per_device, scalars["train/steps_per_sec"], peak_per_device).items()})
                    writer.write_scalars(step, scalars)
                    pending = []

                if step % train_cfg.eval_every == 0 or step == num_steps:
                    eval_metrics = evaluate(step)
                    timer.exclude(eval_metrics["eval/seconds"])

                if step % train_cfg.checkpoint_every == 0 or step == num_steps or sigterm.raised:
                    saving = time.perf_counter()
                    checkpointer.save(step, state, data_iterator)
                    timer.exclude(time.perf_counter() - saving)
                if sigterm.raised:
                    break

        checkpointer.wait()
        checkpointer.close()
        writer.flush()
        writer.close()
        if step < num_steps:
            logging.warning("Stopped by SIGTERM at step %d of %d; the same command resumes.", step, num_steps)
        return state, eval_metrics
