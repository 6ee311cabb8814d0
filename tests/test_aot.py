"""The ahead-of-time pod check (`launch/aot.py`): topology names, errors, report, and the memory /
FLOPs accounting of the real train step compiled for 8 simulated CPU devices (and, when libtpu
is installed, for a small TPU slice)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import pytest

from dalle2_jax.parallel.mesh import ConfigError
from launch import aot
from tests.tiny import ROOT, TINY_DECODER_OVERRIDES, load_config, set_fields, tiny_clip_config

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def tiny_clip(**fields):
    return tiny_clip_config("", **fields)


@pytest.mark.parametrize("name, chip, grid", [
    ("v5p-256", "v5p", (4, 8, 4)),  # v5p-N counts TensorCores: 128 chips
    ("v5p-8", "v5p", (2, 2, 1)),
    ("v4-128", "v4", (4, 4, 4)),
    ("v6e-256", "v6e", (16, 16)),
    ("v5litepod-8", "v5e", (2, 4)),
    ("v5e-1", "v5e", (1, 1)),
    ("v5p:4x4x8", "v5p", (4, 4, 8)),
    ("v6e:2x2", "v6e", (2, 2)),
])
def test_parse_topology(name, chip, grid):
    topology = aot.parse_topology(name)
    assert topology.chip.name == chip
    assert sorted(topology.grid) == sorted(grid) and topology.chips == math.prod(grid)


def test_chip_grids_are_the_usual_torus_shapes():
    assert [aot.chip_grid(2**k, 3) for k in range(2, 10)] == [
        (2, 2, 1), (2, 2, 2), (2, 2, 4), (2, 4, 4), (4, 4, 4), (4, 4, 8), (4, 8, 8), (8, 8, 8)]
    assert [aot.chip_grid(2**k, 2) for k in range(0, 9)] == [
        (1, 1), (1, 2), (2, 2), (2, 4), (4, 4), (4, 8), (8, 8), (8, 16), (16, 16)]


@pytest.mark.parametrize("name, message", [
    ("v9-8", "unknown TPU kind 'v9'"),
    ("v5p", "expected KIND-N"),
    ("v5p-3", "counts TensorCores, 2 per chip"),
    ("v5p-24", "power of two"),
    ("v5p:4x4", "3 positive sizes"),
    ("cpu-0", "cpu-N, N >= 1"),
])
def test_bad_topologies_are_one_line_errors(name, message):
    with pytest.raises(aot.AotError, match=message) as error:
        aot.parse_topology(name)
    assert "\n" not in str(error.value) and "--topology" in str(error.value)


def test_missing_libtpu_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(aot.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(aot.AotError, match=r"needs libtpu; pip install 'jax\[tpu\]==\d"):
        aot.topology_devices(aot.parse_topology("v5p-8"))


def test_mesh_not_matching_the_topology_fails_before_compiling():
    config = tiny_clip(**{"mesh.data": 4, "mesh.fsdp": 4})
    with pytest.raises(ConfigError, match=r"needs 16 devices but 8 are present.*--topology=cpu-8 has 8 devices"):
        aot.run(config, "cpu-8")


def _check(topology: str, **memory) -> aot.StepCheck:
    fields = dict(argument_bytes=10 * aot.GiB, output_bytes=2 * aot.GiB, alias_bytes=2 * aot.GiB,
                  temp_bytes=5 * aot.GiB, code_bytes=0)
    fields.update(memory)
    parsed = aot.parse_topology(topology)
    devices = parsed.chips
    return aot.StepCheck(topology=parsed, device_kind="TPU", num_devices=devices, mesh={"data": 1, "fsdp": devices,
                         "tensor": 1}, num_params=10**9, flops=4.59e14 * devices,
                         compiled_flops_per_device=4e14, compile_seconds=1.0, **fields)


def test_report_compares_memory_with_hbm_and_times_the_flops_at_peak():
    config = tiny_clip()
    check = _check("v5p-8")
    assert check.total_bytes == 15 * aot.GiB and check.fits and check.step_seconds_at_peak == pytest.approx(1.0)
    report = aot.format_report(check, config)
    assert "total              15.00 GiB of 95.0 GiB HBM (16%): fits" in report
    assert "step time at peak 1.000 s (459.0 TFLOP/s bf16 per device)" in report
    assert "FLOPs per step 1.836e+15" in report and "the compiled program counts 1.600e+15" in report  # 4 chips
    # v4 runs one (megacore) device per chip: each has the chip's HBM and peak.
    v4 = _check("v4-8", temp_bytes=40 * aot.GiB)
    assert v4.hbm_bytes == 32 * aot.GiB and v4.peak_flops == pytest.approx(275e12) and not v4.fits
    assert "DOES NOT FIT" in aot.format_report(v4, config)


def test_cpu_compile_accounts_memory_and_flops_of_the_real_train_step():
    """The tiny CLIP's train step on 8 CPU devices: with FSDP the per-device arguments (train
    state and batch) shrink to about 1/8 of data parallel's; the step's FLOPs stay."""
    data = aot.run(tiny_clip(**{"mesh.data": 8, "mesh.fsdp": 1}), "cpu-8")
    fsdp = aot.run(tiny_clip(**{"mesh.data": 1, "mesh.fsdp": 8}), "cpu-8")
    assert data.mesh == {"data": 8, "fsdp": 1, "tensor": 1} and fsdp.mesh["fsdp"] == 8
    assert data.num_params == fsdp.num_params > 10_000 and data.num_devices == 8
    # Float32 parameters and Adam's two moments (no EMA here): 12 bytes a parameter, replicated.
    assert data.argument_bytes > 12 * data.num_params
    ratio = fsdp.argument_bytes / data.argument_bytes
    print(f"per-device argument bytes, FSDP / data parallel: {ratio:.3f}")
    assert 1 / 8 <= ratio < 0.25
    # Counted before partitioning, the step's FLOPs do not depend on the mesh.
    assert fsdp.flops == pytest.approx(data.flops, rel=1e-6)
    for check in (data, fsdp):
        assert check.flops > 0 and check.temp_bytes > 0 and check.hbm_bytes is None
        assert check.total_bytes > check.argument_bytes



def test_flops_of_scanned_towers_count_every_block():
    """XLA counts a scanned tower's one block; the report adds the other blocks' matmuls back."""
    deep = {"mesh.data": 1, "mesh.fsdp": 8, "model.vision.depth": 4, "model.text.depth": 4,
            "model.vision.width": 64, "model.text.width": 64}
    unrolled = aot.run(tiny_clip(**deep), "cpu-8")
    scanned = aot.run(tiny_clip(**deep, **{"model.scan_layers": True}), "cpu-8")
    print(f"FLOPs per step unrolled {unrolled.flops:.4g}, scanned {scanned.flops:.4g}")
    assert scanned.num_params == unrolled.num_params
    assert scanned.flops == pytest.approx(unrolled.flops, rel=0.1)


def test_decoder_conditions_on_an_abstract_clip_and_prior_reads_encoded_shapes():
    """No CLIP run or dataset is read (the configs name the shapes dataset in a missing directory,
    and the stages read synthetic data instead): the decoder's frozen CLIP has abstract parameters, and the
    prior's precomputed-embedding batch has the shapes CLIP's encode gives."""
    clip_config = tiny_clip()
    clip = aot.abstract_clip(clip_config)
    assert clip.embed_dim == 16 and all(hasattr(x, "shape") and not hasattr(x, "addressable_shards")
                                        for x in aot.jax.tree.leaves(clip.params))
    prior_config = set_fields(
        load_config("configs/shapes/prior.py"),
        {"clip.workdir": "unused", "model.width": 16, "model.depth": 1, "model.num_heads": 2,
         "data.data_dir": "/nonexistent"})
    prior = aot.make_abstract_stage(prior_config, clip_config)
    shapes = {k: (v.shape, str(v.dtype)) for k, v in aot.example_shapes(prior).items()}
    assert shapes == {"image_embed": ((16,), "float32"), "text_embed": ((16,), "float32"),
                      "text_encodings": ((16, 16), "float32"), "text_mask": ((16,), "bool")}
    decoder_config = set_fields(
        load_config("configs/shapes/decoder.py"),
        {**TINY_DECODER_OVERRIDES, "clip.workdir": "unused", "data.data_dir": "/nonexistent"})
    decoder = aot.make_abstract_stage(decoder_config, clip_config)
    assert set(aot.example_shapes(decoder)) == {"image", "tokens"}
    with pytest.raises(aot.AotError, match="--clip_config"):
        aot.make_abstract_stage(decoder_config, None)


def test_cli_reports_bad_input_in_one_line():
    command = [sys.executable, "-m", "launch.aot", "--config=configs/shapes/clip.py", "--topology=v9-8"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: --topology='v9-8': unknown TPU kind")


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu not installed (pip install -e '.[tpu_aot]')")
@pytest.mark.parametrize("topology,chips,kind,hbm_gib", [("v5e-4", 4, "TPU v5", 16), ("v4-8", 4, "TPU v4", 32),
                                                          ("v5p-8", 4, "TPU v5", 95)])
def test_tpu_compile_of_the_tiny_clip_for_a_slice(topology, chips, kind, hbm_gib):
    """One device per chip on every kind: v4 and v5p in megacore mode, as they run JAX."""
    check = aot.run(tiny_clip(**{"mesh.data": 1, "mesh.fsdp": -1}), topology)
    assert check.num_devices == chips and check.device_kind.startswith(kind)
    assert check.hbm_bytes == hbm_gib * aot.GiB and check.fits and check.flops > 0
    assert "fits" in aot.format_report(check, tiny_clip())
