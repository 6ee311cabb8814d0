"""Where the train state lives: the check that FSDP really shards it, and its per-device bytes."""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections

from dalle2_jax.parallel import mesh as mesh_lib
from dalle2_jax.parallel.mesh import ConfigError

FSDP_STRATEGIES = ("fsdp", "fsdp_tp")


def _shard_bytes(x: Any, sharding: jax.sharding.Sharding) -> int:
    return math.prod(sharding.shard_shape(x.shape)) * x.dtype.itemsize


def check_params_sharded(params: Any, shardings: Any, config: ml_collections.ConfigDict) -> None:
    """Under an FSDP strategy with more than one FSDP shard, raises ConfigError naming the
    first parameter larger than `sharding.max_replicated_mib` whose sharding replicates it."""
    mesh = jax.tree.leaves(shardings)[0].mesh
    if config.sharding.strategy not in FSDP_STRATEGIES or mesh_lib.fsdp_size(mesh) == 1:
        return
    limit = config.sharding.max_replicated_mib * 2**20
    for (path, x), sharding in zip(jax.tree.leaves_with_path(params), jax.tree.leaves(shardings), strict=True):
        size = math.prod(x.shape) * x.dtype.itemsize
        if size > limit and sharding.is_fully_replicated:
            raise ConfigError(
                f"params{jax.tree_util.keystr(path)} {tuple(x.shape)} ({size / 2**20:.1f} MiB) is replicated on "
                f"every device under sharding.strategy={config.sharding.strategy!r}, mesh "
                f"{dict(mesh.shape)}: no rule's mesh axes divide any of its dimensions; give "
                f"its dimensions logical names or sizes the mesh divides, change sharding.rules, or raise "
                f"sharding.max_replicated_mib={config.sharding.max_replicated_mib}")


def state_bytes_per_device(state: Any, shardings: Any) -> int:
    """Bytes of one device's shards of `state` (abstract or concrete) placed by `shardings`."""
    return sum(_shard_bytes(x, s) for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True))


def compiled_memory(compiled: Any) -> dict[str, float]:
    """Per-device argument, output and temporary bytes from XLA's memory analysis ({} if none)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    return {f"memory/{name}_bytes_per_device": float(getattr(analysis, f"{name}_size_in_bytes"))
            for name in ("argument", "output", "temp")}
