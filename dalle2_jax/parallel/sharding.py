"""Logical-axis sharding: turns the logical names models use into mesh shardings.

The rules are config (`config.sharding.rules`, pairs of logical name -> mesh axis or axes or
None). Flax resolves each array's logical names left to right and never uses a mesh axis twice,
so an activation ('batch', 'length', 'embed') with batch on ('data', 'fsdp') leaves 'embed'
unsharded even though parameters put 'embed' on 'fsdp'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from dalle2_jax.nn import axes

Rules = tuple[tuple[str, Any], ...]


def rules_from_config(rules_cfg: Sequence[Sequence[Any]]) -> Rules:
    """Normalises config rules (lists from JSON/overrides) into Flax's tuple form."""
    out = []
    for pair in rules_cfg:
        name, target = pair
        if isinstance(target, list):
            target = tuple(target)
        out.append((str(name), target))
    return tuple(out)


def unbox_abstract(tree: Any) -> Any:
    """Takes `nn.Partitioned` boxes apart with `.value`, without applying any constraint."""
    return jax.tree.map(
        lambda x: x.value if isinstance(x, nn.Partitioned) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nn.Partitioned),
    )


def logical_specs(boxed_tree: Any) -> Any:
    """PartitionSpecs of logical names for every leaf (unnamed leaves: replicated)."""
    return nn.get_partition_spec(boxed_tree)


def fit_partition_spec(shape: Sequence[int], names: PartitionSpec, mesh_shape: Mapping[str, int],
                       rules: Rules) -> PartitionSpec:
    """Mesh PartitionSpec of an array of `shape` with logical `names`, resolved as Flax does
    (rules in order, first match per name, each mesh axis used once) except that a rule whose
    mesh axes do not divide the dimension is skipped, so a later rule for the name may apply."""
    result: list[Any] = [None] * len(names)
    assigned = [not isinstance(name, str) for name in names]
    used: set[str] = set()
    for name, target in rules:
        if name not in names:
            continue
        pos = list(names).index(name)
        if assigned[pos]:
            continue
        if target is None:
            assigned[pos] = True
            continue
        mesh_axes = (target,) if isinstance(target, str) else tuple(target)
        if used.intersection(mesh_axes) or shape[pos] % math.prod(mesh_shape[a] for a in mesh_axes):
            continue
        result[pos], assigned[pos] = target, True
        used.update(mesh_axes)
    return PartitionSpec(*result)


def mesh_shardings(specs: Any, mesh: jax.sharding.Mesh, rules: Rules, shapes: Any) -> Any:
    """NamedShardings on `mesh` for a tree of logical PartitionSpecs of arrays shaped as the
    matching leaves of `shapes` (see `fit_partition_spec`)."""
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, fit_partition_spec(x.shape, spec, mesh.shape, rules)),
        specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules) -> NamedSharding:
    """Sharding of arrays whose leading axis is the batch."""
    return nn.logical_to_mesh_sharding(PartitionSpec(axes.BATCH), mesh, rules)


def global_batch(local_batch: Any, sharding: NamedSharding) -> Any:
    """Assembles host-local numpy batches into global jax Arrays sharded over the batch axis."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )
