"""Ahead-of-time check of a training config for a TPU pod slice, from a machine without a TPU.

    python -m launch.aot --config=configs/paper/decoder_3p5b.py --topology=v5p-256 \
        [--config.mesh.data=8 --config.mesh.fsdp=16 ...]

Compiles the real train step (`training.loop.make_train_step`, with the state and batch
shardings the loop uses) for the topology's devices with `libtpu`'s compile-only TPU client, and
prints per-device memory (arguments, outputs, temporaries, total against the device's HBM), the
compiled FLOPs of one step and the time those FLOPs take at the device's bf16 peak. Nothing of
the model's size is allocated: parameters, optimizer state and batch are abstract
(`jax.ShapeDtypeStruct`s), the data is `data.name=synthetic` (constant examples of the configured
resolution: nothing is read), and a prior or decoder conditions on a CLIP built from
`--clip_config` with abstract parameters.

Topologies: Cloud TPU accelerator types (`v4-N`, `v5p-N`: N TensorCores, two per chip;
`v5litepod-N`, `v5e-N`, `v6e-N`: N chips), a chip grid (`v5p:4x4x8`, `v6e:16x16`), or `cpu-N`
(N local CPU devices: the same code path without libtpu, for tests).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Compile-only use never touches a TPU: several checks (or tests) may load libtpu at once.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import importlib.util  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

GiB = 1024**3


class AotError(ValueError):
    """Bad input to the AOT check (topology, mesh, missing libtpu); the message is one line."""


@dataclasses.dataclass(frozen=True)
class ChipKind:
    """A TPU generation: HBM and dense bf16 peak per chip, and how Cloud names its slices."""

    name: str
    libtpu_name: str  # the generation's name in libtpu topology strings
    hbm_bytes: int
    peak_flops: float  # bf16, per chip
    grid_dims: int  # 3D torus (v4, v5p) or 2D (v5e, v6e)
    cores_per_chip_in_name: int  # Cloud's `v5p-N` counts TensorCores (2 per chip), `v6e-N` chips
    # libtpu's chip configuration: v4 and v5p run JAX in megacore mode (the chip's two
    # TensorCores are one device); libtpu's compile-only client defaults to a device per core.
    chip_config: str


CHIPS = {
    "v4": ChipKind("v4", "v4", 32 * GiB, 275e12, 3, 2, "megacore"),
    "v5p": ChipKind("v5p", "v5p", 95 * GiB, 459e12, 3, 2, "megacore"),
    "v5e": ChipKind("v5e", "v5e", 16 * GiB, 197e12, 2, 1, "default"),
    "v6e": ChipKind("v6e", "v6e", 32 * GiB, 918e12, 2, 1, "default"),
}
ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A pod slice (`chip` None: `chips` local CPU devices)."""

    name: str
    chip: ChipKind | None
    grid: tuple[int, ...]

    @property
    def chips(self) -> int:
        return math.prod(self.grid)

    @property
    def libtpu_name(self) -> str:
        return f"{self.chip.libtpu_name}:{'x'.join(map(str, self.grid))}"


def chip_grid(chips: int, dims: int) -> tuple[int, ...]:
    """The usual torus shape of `chips` chips (a power of two): 4 -> 2x2x1, 64 -> 4x4x4,
    256 -> 4x8x8 in 3D; 8 -> 2x4, 256 -> 16x16 in 2D (each doubling doubles the last smallest axis)."""
    start = (2, 2, 1) if dims == 3 else (1, 1)
    if chips < math.prod(start) or chips & (chips - 1):
        smallest = math.prod(start)
        raise AotError(f"--topology: {chips} chips; slices have a power of two of chips, at least {smallest}")
    grid = list(start)
    while math.prod(grid) < chips:
        smallest = min(grid)
        grid[len(grid) - 1 - grid[::-1].index(smallest)] *= 2
    return tuple(grid)


def parse_topology(name: str) -> Topology:
    """`v5p-256` (Cloud accelerator type), `v5p:4x4x8` (chip grid) or `cpu-8`; AotError otherwise."""
    known = ", ".join([*CHIPS, *ALIASES, "cpu"])
    match = re.fullmatch(r"([a-z0-9]+)(?:-(\d+)|:(\d+(?:x\d+)+))", name.strip())
    if not match:
        raise AotError(f"--topology={name!r}: expected KIND-N (e.g. v5p-256), KIND:GRID (e.g. v5p:4x4x8) or "
                       f"cpu-N, with KIND one of {known}")
    kind, count, grid = match.groups()
    if kind == "cpu":
        if count is None or int(count) < 1:
            raise AotError(f"--topology={name!r}: a CPU topology is cpu-N, N >= 1 local CPU devices")
        return Topology(name, None, (int(count),))
    chip = CHIPS.get(ALIASES.get(kind, kind))
    if chip is None:
        raise AotError(f"--topology={name!r}: unknown TPU kind {kind!r}; known: {known}")
    if grid is not None:
        dims = tuple(int(d) for d in grid.split("x"))
        if len(dims) != chip.grid_dims or min(dims) < 1:
            raise AotError(f"--topology={name!r}: a {chip.name} grid has {chip.grid_dims} positive sizes")
        return Topology(name, chip, dims)
    cores = int(count)
    if cores % chip.cores_per_chip_in_name:
        raise AotError(f"--topology={name!r}: {kind}-N counts TensorCores, {chip.cores_per_chip_in_name} per chip")
    return Topology(name, chip, chip_grid(cores // chip.cores_per_chip_in_name, chip.grid_dims))


def topology_devices(topology: Topology) -> list[jax.Device]:
    """The devices to compile for: compile-only TPU devices from libtpu, or local CPU devices."""
    if topology.chip is None:
        devices = jax.devices("cpu")
        if len(devices) < topology.chips:
            raise AotError(f"--topology={topology.name}: only {len(devices)} CPU devices in this process")
        return devices[: topology.chips]
    if importlib.util.find_spec("libtpu") is None:
        raise AotError(f"--topology={topology.name}: compiling for TPU needs libtpu; pip install "
                       f"'jax[tpu]=={jax.__version__}' (the libtpu of this jax; or the extra dalle2_jax[tpu_aot])")
    from jax.experimental import topologies

    # One device per chip, as the slice runs: `mesh_utils` refuses a v4 with a device per core.
    return list(topologies.get_topology_desc(topology_name=topology.libtpu_name, platform="tpu",
                                             chip_config_name=topology.chip.chip_config).devices)


# --- the stage, without data or a trained CLIP ------------------------------------------------------
def _on_synthetic_data(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` reading `data.name='synthetic'`: constant examples of its resolution."""
    from dalle2_jax.data import pipeline

    copy = ml_collections.ConfigDict(config.to_dict())
    copy.data.name = pipeline.SYNTHETIC
    return copy


def abstract_clip(clip_config: ml_collections.ConfigDict) -> Any:
    """A `FrozenClip` built from a CLIP config, with abstract (shape-only) float32 parameters."""
    from dalle2_jax.parallel import sharding
    from dalle2_jax.stages.frozen_clip import FrozenClip

    clip = FrozenClip(clip_config, params=None, origin="--clip_config")
    size = clip_config.data.resolution
    clip.params = sharding.unbox_abstract(jax.eval_shape(
        lambda: clip.model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                jnp.zeros((1, clip.context_length), jnp.int32))["params"]))
    return clip


def make_abstract_stage(config: ml_collections.ConfigDict, clip_config: ml_collections.ConfigDict | None) -> Any:
    """The stage of `config` on synthetic data (no dataset is read or prepared), and, for a prior or
    decoder, on `abstract_clip`."""
    from dalle2_jax.stages import make_stage
    from dalle2_jax.stages.decoder import DecoderStage
    from dalle2_jax.stages.prior import PriorStage

    config = _on_synthetic_data(config)
    clip_conditioned = {"prior": PriorStage, "decoder": DecoderStage}
    if config.stage not in clip_conditioned:
        return make_stage(config)
    if clip_config is None:
        raise AotError(f"--clip_config: the {config.stage} stage conditions on a CLIP; name its config file")
    return clip_conditioned[config.stage](config, clip=abstract_clip(clip_config))


def example_shapes(stage: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of one training example, from the stage's own per-example transform."""
    from dalle2_jax.data import pipeline
    from dalle2_jax.stages.prior import PriorStage

    if isinstance(stage, PriorStage) and not stage.on_the_fly:
        # Precomputed embeddings are what the frozen CLIP's `encode` writes for an example.
        example = pipeline.SyntheticSource(stage.config.data.resolution)[0]
        inputs = {k: v[None] for k, v in stage.clip.example(example).items() if k in ("image", "tokens")}
        encoded = jax.eval_shape(stage.clip.encode, stage.clip.params, inputs)
        return {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in encoded.items()}
    source, transform = stage.train_data()
    example = transform(source[0])
    return {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in example.items()}


# --- compiling the real train step --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepCheck:
    """What the compiled train step needs per device, and its FLOPs."""

    topology: Topology
    device_kind: str
    num_devices: int
    mesh: dict[str, int]
    num_params: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs that reuse donated argument buffers
    temp_bytes: int
    code_bytes: int
    # One step, all devices: XLA's count of the step's HLO before optimisation, plus the matmul
    # FLOPs of the loop iterations XLA leaves out (`throughput.repeated_loop_flops`).
    flops: float
    compiled_flops_per_device: float  # the optimised, partitioned program's own count, plus the same
    compile_seconds: float

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def hbm_bytes(self) -> float | None:
        """HBM per device (a chip's: every kind here runs one device per chip)."""
        chip = self.topology.chip
        return None if chip is None else chip.hbm_bytes * self.topology.chips / self.num_devices

    @property
    def peak_flops(self) -> float | None:
        chip = self.topology.chip
        return None if chip is None else chip.peak_flops * self.topology.chips / self.num_devices

    @property
    def fits(self) -> bool | None:
        return None if self.hbm_bytes is None else self.total_bytes <= self.hbm_bytes

    @property
    def step_seconds_at_peak(self) -> float | None:
        return None if self.peak_flops is None else self.flops / self.num_devices / self.peak_flops


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings)


def hlo_flops(train_step: Any, rules: Any, abstract_args: tuple) -> float:
    """XLA's FLOP count of the whole step's HLO before optimisation, lowered for one CPU device:
    libtpu's compile-only client has no cost analysis of a lowered program (it returns None)."""
    from dalle2_jax.parallel.mesh import MESH_AXES
    from dalle2_jax.training import throughput

    one_device = jax.sharding.Mesh(np.asarray(jax.devices("cpu")[:1]).reshape((1,) * len(MESH_AXES)), MESH_AXES)
    unsharded = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract_args)
    with jax.set_mesh(one_device), nn.logical_axis_rules(rules):
        return throughput.cost_flops(jax.jit(train_step).lower(*unsharded))


def check_train_step(config: ml_collections.ConfigDict, stage: Any, topology: Topology,
                     devices: Sequence[jax.Device]) -> StepCheck:
    """Compiles `training.loop`'s train step for `devices` with abstract state and batch, as the
    loop shards them (state by its logical specs, batch over the batch axes, frozen replicated)."""
    import time

    from dalle2_jax.parallel import mesh as mesh_lib
    from dalle2_jax.parallel import rules as rules_lib
    from dalle2_jax.parallel import sharding
    from dalle2_jax.training import loop, optim, throughput

    rules = rules_lib.rules_for_config(config)
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    tx, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
    ema_decay = config.optim.ema_decay
    init_rng, train_rng, _ = jax.random.split(jax.random.key(config.seed), 3)

    make_state = loop.initial_state_fn(stage, tx, ema_decay, train_rng)

    # Outside the mesh context: optax initialises eagerly, which compile-only devices cannot run.
    with nn.logical_axis_rules(rules):
        abstract_state = jax.eval_shape(make_state, init_rng)
        state_specs = loop.state_specs(stage, tx, abstract_state, init_rng)
    state_shardings = sharding.mesh_shardings(state_specs, mesh, rules, abstract_state)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    batch = {k: jax.ShapeDtypeStruct((config.data.batch_size, *v.shape), v.dtype, sharding=batch_sharding)
             for k, v in example_shapes(stage).items()}
    frozen = stage.frozen_params()
    if frozen is not None:
        frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
            np.shape(x), x.dtype, sharding=NamedSharding(mesh, PartitionSpec())), frozen)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        train_step = loop.make_train_step(stage, tx, schedule, config.train, ema_decay)
        started = time.perf_counter()
        traced = loop.jit_train_step(train_step, state_shardings, batch_sharding).trace(
            _abstract(abstract_state, state_shardings), batch, frozen)
        compiled = traced.lower().compile()
        seconds = time.perf_counter() - started
    memory = compiled.memory_analysis()
    # XLA counts a loop body once (scanned layers, gradient-accumulation microbatches).
    repeated = throughput.repeated_loop_flops(traced.jaxpr)
    flops = hlo_flops(train_step, rules, (abstract_state, batch, frozen)) + repeated
    return StepCheck(
        topology=topology,
        device_kind=devices[0].device_kind,
        num_devices=len(devices),
        mesh=dict(mesh.shape),
        num_params=sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_state.params)),
        argument_bytes=memory.argument_size_in_bytes,
        output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes,
        flops=flops,
        compiled_flops_per_device=throughput.cost_flops(compiled) + repeated / len(devices),
        compile_seconds=seconds,
    )


def format_report(check: StepCheck, config: ml_collections.ConfigDict) -> str:
    """The human-readable report: memory per device against HBM, FLOPs, step time at peak."""
    topo = check.topology
    where = (f"{check.num_devices} local CPU devices" if topo.chip is None else
             f"{topo.chips} {topo.chip.name} chips (grid {'x'.join(map(str, topo.grid))}), "
             f"{check.num_devices} devices of kind {check.device_kind!r}")
    model = config.get("model", {})
    lines = [
        f"topology {topo.name}: {where}",
        f"mesh {' '.join(f'{k}={v}' for k, v in check.mesh.items())}; dtype {config.dtype}; "
        f"model.remat {model.get('remat', 'n/a')}; global batch {config.data.batch_size} "
        f"(train.grad_accum_steps {config.train.grad_accum_steps})",
        f"trained parameters {check.num_params:,}; compiled in {check.compile_seconds:.1f} s",
        "memory per device:",
        f"  arguments      {check.argument_bytes / GiB:9.2f} GiB",
        f"  outputs        {(check.output_bytes - check.alias_bytes) / GiB:9.2f} GiB (beyond donated arguments)",
        f"  temporaries    {check.temp_bytes / GiB:9.2f} GiB",
        f"  generated code {check.code_bytes / GiB:9.2f} GiB",
    ]
    total = f"  total          {check.total_bytes / GiB:9.2f} GiB"
    if check.hbm_bytes is not None:
        verdict = "fits" if check.fits else "DOES NOT FIT"
        total += f" of {check.hbm_bytes / GiB:.1f} GiB HBM ({check.total_bytes / check.hbm_bytes:.0%}): {verdict}"
    lines.append(total)
    lines.append(f"FLOPs per step {check.flops:.3e} (XLA's count of the step before optimisation, every "
                 "loop iteration's matmuls and the rematerialised recomputation included; the compiled program counts "
                 f"{check.compiled_flops_per_device * check.num_devices:.3e})")
    if check.step_seconds_at_peak is not None:
        lines.append(f"step time at peak {check.step_seconds_at_peak:.3f} s "
                     f"({check.peak_flops / 1e12:.1f} TFLOP/s bf16 per device)")
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, topology_name: str,
        clip_config: ml_collections.ConfigDict | None = None) -> StepCheck:
    """Parses the topology, checks the config against it, compiles; AotError or ConfigError on bad input."""
    from dalle2_jax import config_schema
    from dalle2_jax.parallel.mesh import ConfigError

    topology = parse_topology(topology_name)
    devices = topology_devices(topology)
    try:
        config_schema.validate(config, num_devices=len(devices), num_processes=1)
    except ConfigError as e:
        raise ConfigError(f"{e} (--topology={topology.name} has {len(devices)} devices)") from None
    return check_train_step(config, make_abstract_stage(config, clip_config), topology, devices)


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a config file; AotError naming --clip_config if it is missing."""
    if not os.path.isfile(path):
        raise AotError(f"--clip_config={path}: no such file")
    spec = importlib.util.spec_from_file_location("aot_clip_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main(argv: Sequence[str]) -> None:
    from absl import flags

    from dalle2_jax.parallel.mesh import ConfigError

    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
    config_arg = flags.FLAGS["config"].serialize().split("=", 1)[-1]
    if not config_arg or not _TOPOLOGY.value:
        sys.exit("error: --config and --topology are required")
    if not os.path.isfile(config_arg.split(":", 1)[0]):
        sys.exit(f"error: --config={config_arg}: no such file")
    config = _CONFIG.value
    try:
        topology = parse_topology(_TOPOLOGY.value)
        if topology.chip is None:  # before the CPU backend starts
            jax.config.update("jax_num_cpu_devices", topology.chips)
        clip_config = load_config_file(_CLIP_CONFIG.value) if config.stage in ("prior", "decoder") else None
        check = run(config, _TOPOLOGY.value, clip_config)
    except (AotError, ConfigError) as e:
        sys.exit(f"error: {e}")
    print(format_report(check, config))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (path[:arg]).")
    _TOPOLOGY = flags.DEFINE_string("topology", None, "v5p-256, v5p:4x4x8, v6e-64, v4-128, ... or cpu-N.")
    _CLIP_CONFIG = flags.DEFINE_string("clip_config", "configs/paper/clip_vit_h16.py",
                                       "A prior's or decoder's CLIP (its config file; abstract parameters).")
    app.run(main)
