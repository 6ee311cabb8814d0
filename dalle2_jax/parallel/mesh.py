"""Device mesh built from the config's `mesh` section.

Mesh axes are always ``('data', 'fsdp', 'tensor')``. Sizes come from the config; one of them may
be ``-1`` and takes the remaining devices. Axes are `Auto` so that Flax Linen's logical sharding
constraints apply (`jax.make_mesh` defaults to Explicit axes, which Linen does not support).

Devices are laid out for the physical topology by `jax.experimental.mesh_utils` (on TPU the
`tensor` axis gets the closest chips). Multi-slice runs set `mesh.dcn_<axis>`: how many slices
(granules joined by the slower data-center network) that axis spans, its size within a slice
being `mesh.<axis> / mesh.dcn_<axis>`. Granules are TPU slices (`device.slice_index`); devices
without a slice index (GPU, CPU) count each process as a granule. The DCN factors multiply to
the number of granules, or the mesh is refused with a ConfigError.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils

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


def dcn_shape(mesh_cfg: ml_collections.ConfigDict, shape: Sequence[int]) -> tuple[int, ...]:
    """The configured DCN factor of each axis (1 where unset), checked against the axis sizes."""
    factors = tuple(int(mesh_cfg.get(f"dcn_{name}", 1)) for name in MESH_AXES)
    for name, size, factor in zip(MESH_AXES, shape, factors):
        if factor < 1 or size % factor:
            raise ConfigError(
                f"mesh.dcn_{name}={factor}: must be a positive divisor of the axis size mesh.{name}={size}")
    return factors


def device_array(mesh_cfg: ml_collections.ConfigDict, devices: Sequence[Any]) -> np.ndarray:
    """The devices arranged in the configured mesh shape for the physical topology."""
    shape = mesh_shape(mesh_cfg, len(devices))
    dcn = dcn_shape(mesh_cfg, shape)
    if math.prod(dcn) == 1:
        return mesh_utils.create_device_mesh(shape, devices)
    by_slice = hasattr(devices[0], "slice_index")
    granules = {d.slice_index if by_slice else d.process_index for d in devices}
    if len(granules) != math.prod(dcn):
        raise ConfigError(
            f"mesh.dcn_*: the DCN factors {dict(zip(MESH_AXES, dcn))} multiply to {math.prod(dcn)}, but the "
            f"devices form {len(granules)} {'slices' if by_slice else 'processes'}")
    ici = tuple(size // factor for size, factor in zip(shape, dcn))
    return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=not by_slice)


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
    """Builds the ('data', 'fsdp', 'tensor') mesh over `devices` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.sharding.Mesh(device_array(mesh_cfg, devices), MESH_AXES,
                             axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
    """Number of distinct batch shards: the product of the axes the batch is split over."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def fsdp_size(mesh: jax.sharding.Mesh) -> int:
    """Number of shards FSDP splits parameters and optimizer state into."""
    return mesh.shape["fsdp"]
