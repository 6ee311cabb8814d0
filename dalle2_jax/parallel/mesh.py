"""Device mesh built from the config's `mesh` section.

Mesh axes are always ``('data', 'fsdp', 'tensor')``. Sizes come from the config; one of them may
be ``-1`` and takes the remaining devices. Axes are `Auto` so that Flax Linen's logical sharding
constraints apply (`jax.make_mesh` defaults to Explicit axes, which Linen does not support).
"""

from __future__ import annotations

import math

import jax
import ml_collections

MESH_AXES = ("data", "fsdp", "tensor")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


def mesh_shape(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
    """Resolves the configured axis sizes (one may be -1) for `num_devices` devices."""
    sizes = [int(mesh_cfg[name]) for name in MESH_AXES]
    fill = [name for name, size in zip(MESH_AXES, sizes) if size == -1]
    for name, size in zip(MESH_AXES, sizes):
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.{name}={size}: axis sizes are positive, or -1 for 'the rest'")
    if len(fill) > 1:
        raise ConfigError(f"mesh: only one axis may be -1, got {', '.join('mesh.' + f for f in fill)}")
    fixed = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % fixed:
            raise ConfigError(
                f"mesh.{fill[0]}=-1: the other axes multiply to {fixed}, which does not divide "
                f"the {num_devices} devices present"
            )
        sizes[MESH_AXES.index(fill[0])] = num_devices // fixed
    elif fixed != num_devices:
        field = next(name for name, size in zip(MESH_AXES, sizes) if size > 1) if fixed > 1 else "data"
        raise ConfigError(
            f"mesh.{field}: the mesh {dict(zip(MESH_AXES, sizes))} needs {fixed} devices but "
            f"{num_devices} are present"
        )
    return tuple(sizes)


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
    """Builds the ('data', 'fsdp', 'tensor') mesh over `devices` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    return jax.make_mesh(
        shape,
        MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
        devices=devices,
    )


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
    """Number of distinct batch shards: the product of the axes the batch is split over."""
    return mesh.shape["data"] * mesh.shape["fsdp"]
