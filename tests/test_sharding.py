"""Meshes, strategies' rule sets, the replicated-parameter check and the throughput table.

Training equivalence across meshes is in test_sharding_strategies.py.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from dalle2_jax import config_schema
from dalle2_jax.nn.remat import policy_name
from dalle2_jax.parallel import mesh as mesh_lib
from dalle2_jax.parallel import rules as rules_lib
from dalle2_jax.parallel import sharding
from dalle2_jax.parallel.mesh import ConfigError
from dalle2_jax.stages import make_stage
from dalle2_jax.training import placement, throughput
from tests.tiny import tiny_clip_config


def mesh_cfg(data=-1, fsdp=1, tensor=1, **dcn) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor, **dcn})


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    """What mesh_utils reads of a device, with the slice index CPU devices lack."""

    id: int
    slice_index: int
    platform: str = "cpu"
    device_kind: str = "fake"
    process_index: int = 0


def test_mesh_spans_the_devices_with_auto_axes():
    mesh = mesh_lib.make_mesh(mesh_cfg(2, 2, 2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert set(mesh.axis_types) == {jax.sharding.AxisType.Auto}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


def test_hybrid_mesh_puts_slices_on_the_dcn_axis():
    devices = [FakeDevice(id=i, slice_index=i // 4) for i in range(8)]
    array = mesh_lib.device_array(mesh_cfg(data=2, fsdp=4, dcn_data=2), devices)
    assert array.shape == (2, 4, 1)
    assert [{d.slice_index for d in row.flat} for row in array] == [{0}, {1}]


@pytest.mark.parametrize("cfg,message", [
    (mesh_cfg(data=2, fsdp=4, dcn_fsdp=3), "mesh.dcn_fsdp=3: must be a positive divisor of the axis size mesh.fsdp=4"),
    (mesh_cfg(data=2, fsdp=4, dcn_data=2), "multiply to 2, but the devices form 1 processes"),
])
def test_dcn_factors_that_cannot_work_name_the_field(cfg, message):
    with pytest.raises(ConfigError, match=message):
        mesh_lib.make_mesh(cfg)


def test_a_rule_that_does_not_divide_falls_back_to_the_next():
    rules = rules_lib.strategy_rules("fsdp", "unet")
    shape = {"data": 1, "fsdp": 8, "tensor": 1}
    names = PartitionSpec(None, None, "conv_in", "conv_out")
    assert sharding.fit_partition_spec((3, 3, 16, 32), names, shape, rules) == PartitionSpec(None, None, "fsdp", None)
    assert sharding.fit_partition_spec((3, 3, 3, 32), names, shape, rules) == PartitionSpec(None, None, None, "fsdp")
    tp = rules_lib.strategy_rules("fsdp_tp", "transformer")
    cube = {"data": 2, "fsdp": 2, "tensor": 2}
    fit = sharding.fit_partition_spec
    assert fit((16, 64), PartitionSpec("embed", "mlp"), cube, tp) == PartitionSpec("fsdp", "tensor")
    assert fit((8, 3), PartitionSpec("batch", "mlp"), cube, tp) == PartitionSpec(("data", "fsdp"), None)


@pytest.mark.parametrize("strategy,mesh", [("dp", (8, 1, 1)), ("fsdp", (1, 8, 1)), ("fsdp_tp", (2, 2, 2))])
def test_strategies_place_the_clip_parameters(strategy, mesh, shapes_data_dir):
    config = tiny_clip_config(shapes_data_dir, **{"sharding.strategy": strategy})
    boxed = jax.eval_shape(make_stage(config).init_params, jax.random.key(0))
    params = sharding.unbox_abstract(boxed)
    device_mesh = mesh_lib.make_mesh(mesh_cfg(*mesh))
    shardings = sharding.mesh_shardings(sharding.logical_specs(boxed), device_mesh,
                                        rules_lib.rules_for_config(config), params)
    used = {axis for s in jax.tree.leaves(shardings) for entry in s.spec if entry for axis in np.atleast_1d(entry)}
    assert used == {"dp": set(), "fsdp": {"fsdp"}, "fsdp_tp": {"fsdp", "tensor"}}[strategy]
    if strategy != "dp":  # every matrix is split; only vectors (norms, biases) may stay whole
        for path, x in jax.tree.leaves_with_path(params):
            if x.ndim >= 2:
                assert not shardings_at(shardings, path).is_fully_replicated, jax.tree_util.keystr(path)


def shardings_at(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def test_large_replicated_parameter_fails_under_fsdp():
    config = config_schema.for_stage("clip")
    mesh = mesh_lib.make_mesh(mesh_cfg(1, 8, 1))
    params = {"layer": {"kernel": jax.ShapeDtypeStruct((3, 100_000), jnp.float32)}}  # 1.1 MiB
    replicated = {"layer": {"kernel": NamedSharding(mesh, PartitionSpec())}}
    config.sharding.strategy = "fsdp"
    with pytest.raises(ConfigError, match=r"params\['layer'\]\['kernel'\] \(3, 100000\) \(1.1 MiB\) is replicated.*"
                                          r"sharding.strategy='fsdp'.*sharding.max_replicated_mib=1.0"):
        placement.check_params_sharded(params, replicated, config)
    config.sharding.max_replicated_mib = 2.0
    placement.check_params_sharded(params, replicated, config)
    config.sharding.max_replicated_mib, config.sharding.strategy = 1.0, "dp"
    placement.check_params_sharded(params, replicated, config)


def test_state_bytes_per_device_follow_the_shardings():
    mesh = mesh_lib.make_mesh(mesh_cfg(1, 8, 1))
    state = {"w": jax.ShapeDtypeStruct((64, 32), jnp.float32), "b": jax.ShapeDtypeStruct((32,), jnp.float32)}
    shardings = {"w": NamedSharding(mesh, PartitionSpec("fsdp")), "b": NamedSharding(mesh, PartitionSpec())}
    assert placement.state_bytes_per_device(state, shardings) == 64 * 32 * 4 // 8 + 32 * 4


@pytest.mark.parametrize("fields,message", [
    ({"sharding.strategy": "zero"}, "sharding.strategy='zero': expected one of"),
    ({"sharding.strategy": "dp", "mesh.data": 4, "mesh.tensor": 2}, "mesh.tensor=2: sharding.strategy='dp' leaves"),
    ({"sharding.strategy": "fsdp", "mesh.data": 1, "mesh.fsdp": 4, "mesh.tensor": 2}, "mesh.tensor=2"),
    ({"model.remat": "some"}, "model.remat='some': expected one of"),
])
def test_config_errors_name_the_field(fields, message, shapes_data_dir):
    config = tiny_clip_config(shapes_data_dir, **fields)
    with pytest.raises(ConfigError, match=message):
        config_schema.validate(config, num_devices=8, num_processes=1)


def test_remat_policy_names():
    assert [policy_name(v) for v in (True, False, "dots_saveable")] == ["full", "none", "dots_saveable"]
    with pytest.raises(ValueError, match="model.remat='everything'"):
        policy_name("everything")


@pytest.mark.parametrize("kind,peak", [("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12),
                                       ("TPU v5p", 459e12), ("TPU v6 lite", 918e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                       ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12)])
def test_peak_table(kind, peak):
    device = FakeDevice(id=0, slice_index=0, platform="tpu" if "TPU" in kind else "gpu", device_kind=kind)
    assert throughput.peak_flops_per_device(device) == peak
    assert throughput.peak_flops_per_device(device, configured=1e12) == 1e12


def test_cpu_peak_is_the_measured_matmul_rate_shared_by_the_devices():
    peak = throughput.peak_flops_per_device(jax.devices()[0])
    assert 1e8 < peak * jax.local_device_count() < 1e13
    assert throughput.throughput_metrics(1e9, 2.0, 4e9) == {"flops_per_sec_per_device": 2e9, "mfu": 0.5}
    assert throughput.throughput_metrics(1e9, 2.0, 0.0) == {"flops_per_sec_per_device": 2e9}


def test_flops_of_a_scanned_stack_count_every_layer():
    """XLA counts a scanned stack's body once; with `repeated_loop_flops` the count is within the
    element-wise work of the unrolled stack's (which XLA counts in full)."""
    from dalle2_jax.nn.transformer import Transformer

    x = jnp.ones((2, 16, 128))  # wide enough that matmuls dominate, as in real models
    counts = {}
    for scan in (False, True):
        model = Transformer(depth=6, width=128, num_heads=2, scan=scan, remat="full")
        params = model.init(jax.random.key(0), x)
        traced = jax.jit(jax.grad(lambda p, m=model: jnp.sum(m.apply(p, x) ** 2))).trace(params)
        compiled = traced.lower().compile()
        counts[scan] = (throughput.cost_flops(compiled), throughput.repeated_loop_flops(traced.jaxpr))
    assert counts[False][1] == 0 and counts[True][0] < counts[False][0] / 3
    assert sum(counts[True]) == pytest.approx(counts[False][0], rel=0.1)
    a, b = jnp.ones((3, 5)), jnp.ones((5, 7))
    assert throughput.matmul_flops(jax.make_jaxpr(jnp.matmul)(a, b)) == 2 * 3 * 5 * 7


def test_the_loop_checks_placement_before_compiling(shapes_data_dir, tmp_path):
    """With the limit below a LayerNorm scale (replicated by design), the run stops at once."""
    from dalle2_jax.training.loop import train_and_evaluate

    config = tiny_clip_config(shapes_data_dir, **{"sharding.strategy": "fsdp", "mesh.data": 1, "mesh.fsdp": 8,
                                                  "sharding.max_replicated_mib": 1e-5})
    with pytest.raises(ConfigError, match=r"params\[.*is replicated on every device"):
        train_and_evaluate(config, str(tmp_path), make_stage(config))


def test_matmul_rate_is_the_best_of_calls_spread_over_min_seconds():
    """A ceiling taken from a few calls in a row can fall in a slow spell of a shared host;
    `_best_rate` keeps calling until `min_seconds` have passed and keeps the fastest call."""
    durations = iter([0.03, 0.01, 0.02] + [0.02] * 1000)
    calls = []

    def fn():
        calls.append(time.perf_counter())
        time.sleep(next(durations))
        return jnp.zeros(())

    rate = throughput._best_rate(fn, (), flops=1.0, repeats=2, min_seconds=0.2)
    assert calls[-1] - calls[1] >= 0.2 - 0.03  # the first call only compiles and warms up
    assert 1 / 0.02 < rate <= 1 / 0.01 + 1e-6  # the fastest call's rate
