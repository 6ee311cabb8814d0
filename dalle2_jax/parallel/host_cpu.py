"""The CPU backend's setup: one device per core, and XLA:CPU's convolutions run by Eigen in training.

Both must happen before JAX starts a backend (the first computation or device query); every
command line calls `configure_cpu_backend` first. On GPU and TPU hosts the CPU backend exists as
well, so the settings are harmless there.

Why Eigen for convolutions: jaxlib 0.10 hands convolutions to YNNPACK by default, which runs the
UNets' 3 x 3 convolutions, and most of all their kernel gradients (a convolution whose window is
the whole feature map), far slower than XLA's Eigen path. Measured on this project's 2-core AMD
EPYC machine (2026-11-28): six conv + SiLU layers forward and backward (`bench/conv_gradients.py`)
82 -> 110 GFLOP/s at 16 x 16 and 64 channels, 85 -> 114 at 8 x 8 and 128; the shapes decoder's
train step (`bench/ab_train.py`, alternating 20 s turns) 132 steps against 112, 18% faster.
YNNPACK stays on for matmuls, where it is faster at these sizes.

But Eigen's convolutions are not batch-invariant (an image's result can differ in the last bit
with the batch it is computed in; YNNPACK's did not, measured), and the image manipulations
depend on that: on flat renders the DDIM-inverted latent that reproduces an image is degenerate
(standard deviation ~50, pipeline.py) and amplifies such differences. On the main job's run of
3469b2f (8 sources), variations differed from one another by 18.7 (0-255) with Eigen against 3.6
with YNNPACK (the dataset's own renders: 3.6), and interpolation endpoints kept their sources'
attributes 87.5% against 100%. So the commands that invert images (`dalle2_jax.sample`, the
manipulations evaluation) ask for `batch_invariant=True` and keep YNNPACK; training and
text-to-image take the speed. Later measured (2026-11-28): the decoder's compiled sampling loop on
Eigen is not even run-to-run deterministic (six calls with the same inputs and key, one process,
differed by up to 1.9 on pixels in [-1, 1]; none on YNNPACK), which may be the larger part of the
inversions' trouble. The train command's final text to image therefore varies between reruns of
the same weights (README); its training steps did not.

XLA aborts the process on a flag it does not know, and this one is experimental, so it is set
only on the jaxlib versions it was measured on; a user's own `XLA_FLAGS` setting of it wins.
"""

from __future__ import annotations

import os

from absl import logging

CONVOLUTIONS_ON_EIGEN = "--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
VERIFIED_JAXLIB = ("0.10.",)  # version prefixes the flag exists in and was measured on


def configure_cpu_backend(num_devices: int = 0, batch_invariant: bool = False) -> None:
    """Splits the host CPU into `num_devices` devices (0: one per core) and, unless
    `batch_invariant`, routes its convolutions to Eigen; call before anything asks JAX for a device."""
    import jax
    import jaxlib

    jax.config.update("jax_num_cpu_devices", num_devices or os.cpu_count() or 1)
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if batch_invariant or "xla_cpu_experimental_ynn_fusion_type" in xla_flags:
        return  # YNNPACK's convolutions, or the user chose
    if not jaxlib.__version__.startswith(VERIFIED_JAXLIB):
        logging.info("jaxlib %s: leaving XLA:CPU's convolutions to its default library (the Eigen "
                     "setting was measured on %s).", jaxlib.__version__, ", ".join(VERIFIED_JAXLIB))
        return
    os.environ["XLA_FLAGS"] = f"{xla_flags} {CONVOLUTIONS_ON_EIGEN}".strip()
