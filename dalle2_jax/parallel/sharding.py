"""Logical-axis sharding: turns the logical names models use into mesh shardings.

The rules are config (`config.sharding.rules`, pairs of logical name -> mesh axis or axes or
None). Flax resolves each array's logical names left to right and never uses a mesh axis twice,
so an activation ('batch', 'length', 'embed') with batch on ('data', 'fsdp') leaves 'embed'
unsharded even though parameters put 'embed' on 'fsdp'.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def mesh_shardings(specs: Any, mesh: jax.sharding.Mesh, rules: Rules) -> Any:
    """NamedShardings on `mesh` for a tree of logical PartitionSpecs."""
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules) -> NamedSharding:
    """Sharding of arrays whose leading axis is the batch."""
    return nn.logical_to_mesh_sharding(PartitionSpec(axes.BATCH), mesh, rules)


def global_batch(local_batch: Any, sharding: NamedSharding) -> Any:
    """Assembles host-local numpy batches into global jax Arrays sharded over the batch axis."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )
