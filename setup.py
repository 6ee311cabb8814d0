"""dalle2_jax: train and sample DALL-E 2 (unCLIP) in JAX/Flax, from one CPU to TPU pods."""

from setuptools import find_packages, setup

setup(
    name="dalle2_jax",
    version="0.1.0",
    description="DALL-E 2 (unCLIP) training and sampling in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["dalle2_jax", "dalle2_jax.*", "launch", "launch.*"]),
    python_requires=">=3.11",
    # Lower bounds are the versions tested (Python 3.11, 2026-11); no upper bounds until
    # something breaks.
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "tensorflow-datasets>=4.9.10",
        "array_record>=0.8.6",  # TFDS array_record files, read without TensorFlow
        "grain>=0.2.18",  # deterministic, resumable input pipeline
        "ml_collections>=1.1.0",
        "clu>=0.0.12",
        # clu's TensorBoard writer imports TensorFlow; tensorflow-cpu 2.21 no longer pulls
        # tensorboard in, so it is named too. JAX does all the computing.
        "tensorflow-cpu>=2.21.0",
        "tensorboard>=2.21.0",
        "pillow>=11.0",
        "numpy>=2.0",
        "absl-py>=2.1",
        # CLIP's BPE tokenizer (clean-up and pre-tokenization exactly as CLIP's) and the
        # pretrained-CLIP converter's checkpoint reader.
        "ftfy>=6.3.1",
        "regex>=2024.4.16",
        "safetensors>=0.4.3",
    ],
    extras_require={
        "test": ["pytest>=8.0", "ruff>=0.15"],
        # `python -m launch.aot`: compiling for TPU topologies without a TPU needs the libtpu
        # that the installed jax's `tpu` extra names (a 213 MB wheel for jax 0.10.2, so it is
        # not part of the test extras; its test is skipped without it).
        "tpu_aot": ["jax[tpu]>=0.10.2"],
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
    ],
)
