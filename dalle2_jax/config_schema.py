"""The config schema: every field with its default and meaning, and the checks run before compiling.

Experiment configs (`configs/**.py`) start from `for_stage(name)` and change fields; the result
is locked, so a misspelt field in a config file or a `--config.field=value` override fails at
once instead of being silently added.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import ml_collections

from dalle2_jax.nn.remat import REMAT_POLICIES
from dalle2_jax.parallel import mesh as mesh_lib
from dalle2_jax.parallel import rules as rules_lib
from dalle2_jax.parallel.mesh import ConfigError
from dalle2_jax.stages import stage_module

# Logical axis -> mesh axes used outside training (the inference pipeline's batch sharding).
# Training takes its rules from `sharding.strategy` (see dalle2_jax.parallel.rules).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("patch", None),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("norm", None),
)

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def base_config() -> ml_collections.ConfigDict:
    """Fields every stage shares."""
    c = ml_collections.ConfigDict()
    c.stage = ""  # which stage this config trains: see dalle2_jax.stages
    c.seed = 0  # root of every random key: init, dropout/noise, data order
    c.dtype = "float32"  # compute dtype (params stay float32): float32 on CPU, bfloat16 on TPU/GPU

    c.data = ml_collections.ConfigDict()
    c.data.name = "shapes"  # TFDS dataset; 'shapes' is built in, generated on first use; 'synthetic': constant
    c.data.data_dir = ""  # TFDS data_dir; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.resolution = 32  # shapes: image side in pixels (a power of two, 8..256)
    c.data.train_size = 50_000  # shapes: examples in the train split
    c.data.validation_size = 2_000  # shapes: examples in the validation split
    c.data.heldout_size = 2_000  # shapes: examples in the held-out (unseen color/shape) split
    c.data.dataset_seed = 0  # shapes: seed of the generated dataset (not of the data order)
    c.data.batch_size = 256  # global training batch (all hosts and devices together)
    c.data.eval_batch_size = 512  # global batch for evaluation
    c.data.eval_limit = 0  # examples per eval split (0 = all)
    c.data.cache_in_memory = False  # keep decoded examples in host memory once read (small datasets)
    c.data.num_threads = 2  # grain reader threads per host
    c.data.prefetch = 4  # grain prefetch buffer (elements)

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.kind = "bytes"  # 'bytes': UTF-8 bytes; 'words': hashed lower-cased words; 'clip_bpe': CLIP's BPE
    c.tokenizer.context_length = 64  # tokens per caption, start and end included
    c.tokenizer.vocab_size = 8192  # 'words' only: ids words are hashed into (bytes: fixed 259)
    c.tokenizer.bpe_path = ""  # 'clip_bpe' only: CLIP's merges file ('' = from an installed open_clip_torch)

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-3  # peak learning rate
    c.optim.warmup_steps = 100  # linear warmup from 0
    c.optim.schedule = "cosine"  # 'cosine' (to end_learning_rate_factor * peak) or 'constant'
    c.optim.end_learning_rate_factor = 0.0  # final LR as a fraction of the peak (cosine)
    c.optim.b1 = 0.9  # Adam beta1
    c.optim.b2 = 0.98  # Adam beta2
    c.optim.eps = 1e-6  # Adam epsilon
    c.optim.weight_decay = 0.1  # decoupled weight decay on matrices (AdamW)
    c.optim.grad_clip_norm = 1.0  # clip the global gradient norm (0 = off)
    c.optim.ema_decay = 0.0  # EMA of parameters used for evaluation (0 = off)

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 1000  # optimizer steps
    c.train.grad_accum_steps = 1  # microbatches per step (batch_size is split into them)
    c.train.log_every = 50  # steps between metric writes
    c.train.eval_every = 500  # steps between evaluations (and at the end)
    c.train.checkpoint_every = 500  # steps between checkpoints (and at the end / on SIGTERM)
    c.train.keep_checkpoints = 3  # newest checkpoints kept
    c.train.async_checkpointing = True  # write checkpoints in the background
    c.train.max_nonfinite_in_a_row = 10  # stop after this many skipped (non-finite) steps in a row
    c.train.peak_flops_per_device = 0.0  # for MFU; 0 = the device table (CPU: measured matmul rate)
    # jax.profiler trace of this many train steps into WORKDIR/profile (TensorBoard's Profile tab,
    # or `jax.profiler.ProfileData.from_file`), from step train.profile_from_step on (a run
    # resumed past that step traces nothing); 0 = none.
    c.train.profile_steps = 0
    c.train.profile_from_step = 20  # after compilation and the first steps' warm-up

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel axis size (-1 = the devices left over)
    c.mesh.fsdp = 1  # parameter-sharding (ZeRO-3 / FSDP) axis size
    c.mesh.tensor = 1  # tensor-parallel axis size
    c.mesh.num_cpu_devices = 0  # CPU only: devices to split the host into (0 = one per core)
    c.mesh.dcn_data = 1  # multi-slice: slices the data axis spans (mesh.data / this = size per slice)
    c.mesh.dcn_fsdp = 1  # multi-slice: slices the fsdp axis spans
    c.mesh.dcn_tensor = 1  # multi-slice: slices the tensor axis spans (keep 1: DCN is slow)

    c.sharding = ml_collections.ConfigDict()
    c.sharding.strategy = "fsdp_tp"  # 'dp' | 'fsdp' | 'fsdp_tp': see dalle2_jax/parallel/rules.py
    c.sharding.rules = ()  # explicit logical axis -> mesh axes pairs; () = the strategy's rules
    c.sharding.max_replicated_mib = 1.0  # fsdp*: a replicated parameter larger than this is an error
    return c


def for_stage(stage: str) -> ml_collections.ConfigDict:
    """The full default config of `stage`, locked against unknown fields."""
    c = base_config()
    c.stage = stage
    module = stage_module(stage)
    c.model = module.model_config()
    for name, section in getattr(module, "stage_sections", dict)().items():
        c[name] = section
    c.lock()
    return c


def from_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file (so one config can start from another)."""
    spec = importlib.util.spec_from_file_location(f"config_{os.path.basename(path).removesuffix('.py')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _positive(config: ml_collections.ConfigDict, *fields: str) -> None:
    for field in fields:
        section, name = field.split(".")
        value = config[section][name]
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{field}={value!r}: must be a positive integer")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None,
             num_processes: int | None = None) -> None:
    """Checks that `config` can run on the devices present; raises ConfigError naming the field."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    num_processes = jax.process_count() if num_processes is None else num_processes
    module = stage_module(config.stage)
    if config.dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"dtype={config.dtype!r}: expected one of {COMPUTE_DTYPES}")
    _positive(config, "train.num_steps", "train.grad_accum_steps", "train.log_every",
              "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
              "train.max_nonfinite_in_a_row", "data.batch_size", "data.eval_batch_size")
    if config.train.profile_steps:
        _positive(config, "train.profile_steps", "train.profile_from_step")
        if config.train.profile_from_step + config.train.profile_steps > config.train.num_steps:
            raise ConfigError(
                f"train.profile_from_step={config.train.profile_from_step} + train.profile_steps="
                f"{config.train.profile_steps} is past train.num_steps={config.train.num_steps}")
    if config.optim.schedule not in ("cosine", "constant"):
        raise ConfigError(f"optim.schedule={config.optim.schedule!r}: expected 'cosine' or 'constant'")
    if not 0.0 <= config.optim.ema_decay < 1.0:
        raise ConfigError(f"optim.ema_decay={config.optim.ema_decay}: must be in [0, 1)")

    shape = dict(zip(mesh_lib.MESH_AXES, mesh_lib.mesh_shape(config.mesh, num_devices)))
    mesh_lib.dcn_shape(config.mesh, tuple(shape.values()))
    strategy = config.sharding.strategy
    if strategy not in rules_lib.STRATEGIES:
        raise ConfigError(f"sharding.strategy={strategy!r}: expected one of {rules_lib.STRATEGIES}")
    for axis, size in shape.items():
        if size > 1 and axis not in rules_lib.STRATEGY_AXES[strategy]:
            raise ConfigError(f"mesh.{axis}={size}: sharding.strategy={strategy!r} leaves that axis idle; "
                              f"set it to 1 or pick a strategy that uses it")
    remat = config.get("model", {}).get("remat", "none")
    if remat not in REMAT_POLICIES + (True, False):
        raise ConfigError(f"model.remat={remat!r}: expected one of {REMAT_POLICIES}")
    data_parallel = shape["data"] * shape["fsdp"]
    for field in ("batch_size", "eval_batch_size"):
        value = config.data[field]
        if value % data_parallel:
            raise ConfigError(
                f"data.{field}={value} is not divisible by the data-parallel size {data_parallel} "
                f"(mesh.data={shape['data']} x mesh.fsdp={shape['fsdp']})")
        if value % num_processes:
            raise ConfigError(f"data.{field}={value} is not divisible by the {num_processes} processes")
    micro = config.data.batch_size // config.train.grad_accum_steps
    if config.data.batch_size % config.train.grad_accum_steps or micro % data_parallel:
        raise ConfigError(
            f"train.grad_accum_steps={config.train.grad_accum_steps}: data.batch_size="
            f"{config.data.batch_size} must split into that many microbatches, each divisible by "
            f"the data-parallel size {data_parallel}")
    module.validate_config(config)
