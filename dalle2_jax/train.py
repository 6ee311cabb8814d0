"""Trains the stage a config names, in a workdir, resuming from its latest checkpoint.

    python -m dalle2_jax.train --config=configs/shapes/clip.py --workdir=runs/clip \
        [--config.train.num_steps=2000 ...]

The resolved config is saved as `WORKDIR/config.json`. Rerunning with the same workdir resumes;
a config that differs from the saved one in anything but run-length and logging fields is
refused, so a finished or half-finished run is never silently continued as another experiment.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorBoard writing imports TensorFlow

from absl import app, flags, logging  # noqa: E402
from etils import epath  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
# Multi-host runs (see dalle2_jax/parallel/distributed.py): not needed under SLURM, on GKE TPU
# slices and Cloud TPU VMs, where JAX finds the coordinator itself.
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, from 0.")

# Fields that may change between runs in one workdir: they do not change what is learned up to
# the step reached (num_steps does change the cosine schedule's length; a warning says so).
# Fields ending in "." are prefixes: how samples are drawn never changes what was learned.
RESUMABLE_CHANGES = (
    "train.num_steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.async_checkpointing", "data.num_threads", "data.prefetch",
    "data.eval_batch_size", "data.eval_limit", "data.data_dir",
    "prior.eval_limit", "sampling.", "train.peak_flops_per_device", "train.profile_steps",
    "train.profile_from_step",
    # How the work is laid out on devices: the same experiment, numerically equal up to rounding.
    "mesh.", "sharding.", "model.remat",
)


# Fields added to the schema after runs were made, with the value that reproduces those runs: a
# saved config.json without one of them, at that value now, describes the same experiment.
ADDED_FIELDS = {"tokenizer.bpe_path": "", "model.activation": "gelu", "model.vision.image_mean": [],
                "model.vision.image_std": [], "clip.pretrained": ""}


class UsageError(ValueError):
    """Bad command-line input, reported as one line."""


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_workdir_config(saved_json: str, config_json: str) -> list[str]:
    """Fields whose change is allowed on resume; raises UsageError naming a field that is not."""
    saved, current = _flatten(json.loads(saved_json)), _flatten(json.loads(config_json))
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k)
                     and not (k not in saved and k in ADDED_FIELDS and current[k] == ADDED_FIELDS[k]))
    for field in changed:
        if not any(field == allowed or (allowed.endswith(".") and field.startswith(allowed))
                   for allowed in RESUMABLE_CHANGES):
            raise UsageError(
                f"config.{field}={current.get(field)!r} differs from {saved.get(field)!r} in the "
                "workdir's config.json: use a new --workdir for a different experiment")
    return changed


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with config errors (unknown field, missing file) as one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")
    except (AttributeError, KeyError) as e:  # ml_collections: override of an unknown field
        message = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ")
        sys.exit(f"error: config override names an unknown field: {message}")


class _QuietLibraries:
    """Drops the INFO chatter of orbax and TFDS (warnings and errors still show)."""

    _noisy = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/xla_bridge")

    def filter(self, record) -> bool:
        return record.levelno >= std_logging.WARNING or not any(n in record.pathname for n in self._noisy)


def _prepare_devices(config) -> None:
    """Sets up the CPU backend (`parallel/host_cpu.py`) before any JAX backend starts."""
    from dalle2_jax import multistage
    from dalle2_jax.parallel.host_cpu import configure_cpu_backend

    mesh = config[config.stages[0]].mesh if config.stage == multistage.STAGE else config.mesh
    configure_cpu_backend(mesh.num_cpu_devices)


def train_stage(config, workdir: str) -> dict[str, float]:
    """Checks `config` against the devices and the workdir, then trains its stage there."""

    from dalle2_jax import config_schema
    from dalle2_jax.parallel import distributed
    from dalle2_jax.parallel.mesh import ConfigError
    from dalle2_jax.stages import make_stage
    from dalle2_jax.training.loop import train_and_evaluate

    path = epath.Path(workdir)
    saved = path / "config.json"
    try:
        config_schema.validate(config)
        config_json = config.to_json(sort_keys=True, indent=2)
        if saved.exists():
            changed = check_workdir_config(saved.read_text(), config_json)
            if "train.num_steps" in changed:
                logging.warning("train.num_steps changed: the learning-rate schedule is stretched.")
        stage = make_stage(config)
    except (ConfigError, UsageError, ValueError) as e:
        sys.exit(f"error: {e}")
    distributed.barrier("config.json checked")  # by every host, before host 0 overwrites it
    if distributed.is_chief():
        path.mkdir(parents=True, exist_ok=True)
        saved.write_text(config_json)
    _, metrics = train_and_evaluate(config, workdir, stage)
    for name, value in sorted(metrics.items()):
        logging.info("final %s = %.4f", name, value)
    return metrics


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config_arg = flags.FLAGS["config"].serialize().split("=", 1)[-1]
    if not config_arg or not _WORKDIR.value:
        sys.exit("error: --config and --workdir are required")
    config_path = config_arg.split(":", 1)[0]
    if not os.path.isfile(config_path):
        sys.exit(f"error: --config={config_path}: no such file")
    config = _CONFIG.value
    logging.get_absl_handler().addFilter(_QuietLibraries())
    from dalle2_jax.parallel import distributed

    try:  # before any other JAX call
        distributed.initialize(distributed.Flags(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value))
    except distributed.DistributedError as e:
        sys.exit(f"error: {e}")
    _prepare_devices(config)


    from dalle2_jax import config_schema, multistage
    from dalle2_jax.parallel.mesh import ConfigError

    workdir = os.path.abspath(_WORKDIR.value) if "://" not in _WORKDIR.value else _WORKDIR.value
    if config.stage != multistage.STAGE:
        train_stage(config, workdir)
        return
    try:  # every stage's config is checked before the first one compiles
        for _, stage_config in multistage.stage_configs(config, workdir):
            config_schema.validate(stage_config)
    except (ConfigError, ValueError) as e:
        sys.exit(f"error: {e}")
    report = multistage.run(config, workdir, train_stage)
    if "samples" in config:
        from dalle2_jax.evaluation.generation import evaluate_text_to_image

        started = time.perf_counter()
        report["samples"] = {**evaluate_text_to_image(workdir, config.samples),
                             "seconds": time.perf_counter() - started}
        if distributed.is_chief():
            (epath.Path(workdir) / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        logging.info("Text-to-image samples in %s/samples/grid.png: %s", workdir, json.dumps(report["samples"]))
    logging.info("All stages done; report in %s/report.json: %s", workdir, json.dumps(report, sort_keys=True))


def run() -> None:
    from dalle2_jax.parallel.host_cpu import restart_with_huge_page_malloc

    restart_with_huge_page_malloc()
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
