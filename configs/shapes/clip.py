"""CLIP on the built-in shapes dataset, 32 px: the first stage of the shapes unCLIP run.

Run (2-core CPU, no accelerator):
    python -m dalle2_jax.train --config=configs/shapes/clip.py --workdir=runs/clip

Measured (2026-11-27, this project's 2-core CPU, the README main job on a fresh clone): 8 min 35 s
wall for the 600 steps, generating the dataset on first use (~30 s) included; zero-shot
top-1 over the 720 captions 100.0% on `validation` and 81.7% on `heldout` (unseen color-shape
pairs); validation top-1 passes 90% between steps 200 and 400. Details in the README.

Variants: `configs/shapes/clip.py:res=64` trains on 64 px images (patch 16, same token count;
not measured yet).
"""

from dalle2_jax import config_schema


def get_config(arg: str | None = None):
    """`arg`: 'res=32' (default) or 'res=64'."""
    options = dict(kv.split("=", 1) for kv in (arg or "res=32").split(",") if kv)
    resolution = int(options.get("res", 32))

    config = config_schema.for_stage("clip")
    config.data.resolution = resolution
    config.data.batch_size = 256
    config.data.cache_in_memory = True  # decoded once per process (the main job's stages share it)
    config.data.eval_batch_size = 512
    # Hashed words: a caption is ~12 tokens instead of ~60 bytes, which makes the text tower
    # about 4x cheaper than the byte tokenizer on this CPU.
    config.tokenizer.kind = "words"
    config.tokenizer.context_length = 16

    config.model.embed_dim = 128
    config.model.vision.patch_size = resolution // 4  # 4 x 4 = 16 patches (8 px each at 32 px)
    config.model.vision.width = 128
    config.model.vision.depth = 4
    config.model.vision.num_heads = 4
    config.model.text.width = 128
    config.model.text.depth = 3
    config.model.text.num_heads = 4

    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 100
    config.optim.weight_decay = 0.05

    config.train.num_steps = 600
    config.train.log_every = 50
    config.train.eval_every = 200
    config.train.checkpoint_every = 200
    return config
