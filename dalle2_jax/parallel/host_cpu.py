"""The CPU backend's setup: one device per core, XLA:CPU's convolutions on Eigen in training, and
huge pages for XLA's per-step buffers.

`configure_cpu_backend` splits the host CPU into devices; it must run before JAX starts a
backend (the first computation or device query), so every command line calls it first. On GPU
and TPU hosts the CPU backend exists as well, so it is harmless there.

`restart_with_huge_page_malloc` is the first thing the train command does: it restarts the
command with glibc's malloc asking for transparent huge pages (`huge_page_malloc_environment`).

`training_compiler_options` is what the training loop's `jax.jit` of the train step passes as
`compiler_options`: on the CPU backend it routes that one program's convolutions to Eigen, while
every other program (evaluation, embeddings, sampling, the image manipulations) keeps jaxlib's
default, YNNPACK. Why both:

- Eigen trains faster. jaxlib 0.10 hands convolutions to YNNPACK by default, which runs the
  UNets' 3 x 3 convolutions, and most of all their kernel gradients (a convolution whose window
  is the whole feature map), far slower than Eigen. Measured on this project's 2-core AMD EPYC
  machine (2026-11-28): six conv + SiLU layers forward and backward (`bench/conv_gradients.py`)
  82 -> 110 GFLOP/s at 16 x 16 and 64 channels, 85 -> 114 at 8 x 8 and 128; the shapes decoder's
  train step (`bench/ab_train.py`, alternating 20 s turns) 132 steps against 112, 18% faster.
  YNNPACK stays on for matmuls, where it is faster at these sizes.
- YNNPACK samples reproducibly. The decoder's compiled sampling loop on Eigen is not run-to-run
  deterministic (six calls with the same weights, inputs and key in one process differed by up to
  1.9 on pixels in [-1, 1]; none on YNNPACK, 2026-11-28), and Eigen's convolutions are not
  batch-invariant (an image's result changed in the last bit between batch 8 and 16; YNNPACK's
  did not at 1, 4, 8 or 12). The image manipulations depend on both: on flat renders the
  DDIM-inverted latent that reproduces an image is degenerate (standard deviation ~50,
  pipeline.py) and amplifies such differences (on 8 sources of one run, variations differed from
  one another by 18.7 (0-255) on Eigen against 3.6 on YNNPACK, the dataset's own spread). And
  forward-only sampling loses nothing on YNNPACK: the shapes decoder's 50-step sampler ran at
  1.15-1.25 images/s on either (`bench/image_sampling.py`, alternating runs, 2026-12-06).
  Training steps on Eigen were deterministic run to run (identical losses over whole main jobs).

Until 2026-12-06 the choice was process-wide (`XLA_FLAGS`), so the train command's final text to
image ran on Eigen and varied between reruns of the same weights; per-program options remove that.
The option is experimental (XLA rejects a value it does not know), so it is passed only on the
jaxlib versions it was measured on, and a user's own `XLA_FLAGS` setting of it wins everywhere.
"""

from __future__ import annotations

import os
import sys

from absl import logging

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# jaxlib 0.10's default hands single dots, single convolutions and reductions to YNNPACK; the
# training step keeps all but the convolutions (the option's value replaces the whole list; this
# compiles the same program as XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-<convolutions>).
TRAINING_OPTIONS = {YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
VERIFIED_JAXLIB = ("0.10.",)  # version prefixes the option exists in and was measured on

HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_page_malloc_environment() -> dict[str, str] | None:
    """The environment to restart the command in so that glibc's malloc asks for transparent huge
    pages, or None where that is already so, cannot work, or the user chose.

    XLA:CPU mallocs each execution's temporary buffer (137 MB per device for the shapes decoder's
    train step) and frees it afterwards; glibc serves such sizes with mmap and munmap, so every
    train step faults the buffer in again 4 KiB at a time: 12-14% of both cores' time went to the
    kernel during the decoder's training (vmstat, 2026-12-06). With the glibc >= 2.35 tunable
    `glibc.malloc.hugetlb=1`, malloc madvises its mappings for transparent huge pages, which a
    kernel in THP "madvise" mode (the usual default) then backs with 2 MiB pages: 512 times fewer
    faults and TLB misses. Measured with `bench/ab_train.py` (alternating 20 s turns, AMD EPYC,
    2 devices, 2026-12-06, against `GLIBC_TUNABLES=glibc.malloc.hugetlb=0`): the shapes decoder
    trained 218 steps against 196 in six turns each (+11%), the upsampler 210 against 186 (+13%).
    Tunables are read once at process start, hence a restart (`restart_with_huge_page_malloc`).
    Not done: on kernels whose THP mode is "always" (nothing to gain) or "never" (nothing to
    get), without glibc >= 2.35, or when GLIBC_TUNABLES already names the tunable (set
    `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` to opt out).
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if not sys.platform.startswith("linux") or HUGE_PAGE_TUNABLE in tunables:
        return None
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"; empty on musl
    try:
        version = tuple(int(part) for part in libc.removeprefix("glibc ").split(".")[:2])
        with open(THP_MODE_FILE) as f:
            thp_mode = f.read()
    except (ValueError, OSError):
        return None
    if not libc.startswith("glibc ") or version < (2, 35) or "[madvise]" not in thp_mode:
        return None
    return {**os.environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, f"{HUGE_PAGE_TUNABLE}=1")))}


def restart_with_huge_page_malloc() -> None:
    """Re-executes this command (same interpreter, arguments and process id) in
    `huge_page_malloc_environment()`, if that is not None; call first thing in a command line."""
    environment = huge_page_malloc_environment()
    if environment is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)


def configure_cpu_backend(num_devices: int = 0) -> None:
    """Splits the host CPU into `num_devices` devices (0: one per core); call before anything
    asks JAX for a device."""
    import jax

    jax.config.update("jax_num_cpu_devices", num_devices or os.cpu_count() or 1)


def training_compiler_options(platform: str) -> dict[str, str] | None:
    """`compiler_options` for jitting a train step that runs on `platform`'s devices: on "cpu",
    convolutions on Eigen (see the module docstring); else None (the backend's defaults)."""
    import jaxlib

    if platform != "cpu" or YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return None  # not the CPU, or the user chose
    if not jaxlib.__version__.startswith(VERIFIED_JAXLIB):
        logging.info("jaxlib %s: leaving XLA:CPU's convolutions in training to its default library "
                     "(the Eigen setting was measured on %s).", jaxlib.__version__, ", ".join(VERIFIED_JAXLIB))
        return None
    return dict(TRAINING_OPTIONS)
