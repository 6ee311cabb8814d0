"""The unCLIP diffusion prior on the shapes CLIP's embeddings (32 px shapes CLIP).

Run (2-core CPU), after `configs/shapes/clip.py` has finished in runs/shapes_clip:
    python -m dalle2_jax.train --config=configs/shapes/prior.py --workdir=runs/shapes_prior

`clip.workdir` names the CLIP run (override with --config.clip.workdir=DIR). The first run
computes the CLIP embeddings of every split into <clip.workdir>/embeddings.

Measured (2026-11-27, this project's 2-core CPU, inside the README main job): 8 min 53 s wall,
~70 s of CLIP embeddings included. Sampled embeddings (64 DDIM steps, best of 2): cosine to the
true image embedding 0.988 on validation (text-embedding baseline 0.968), 0.937 held-out (0.922);
zero-shot top-1 of the sampled embedding over the 720 captions 100% on both. README has the rest.
"""

from dalle2_jax import config_schema


def get_config(arg: str | None = None):
    del arg  # no variants
    config = config_schema.for_stage("prior")
    config.clip.workdir = "runs/shapes_clip"
    config.data.batch_size = 256
    config.data.cache_in_memory = True  # decoded once per process (the main job's stages share it)
    config.data.eval_batch_size = 256

    config.model.width = 128
    config.model.depth = 4
    config.model.num_heads = 4

    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 100
    config.optim.weight_decay = 0.05
    config.optim.ema_decay = 0.999

    config.sampling.num_steps = 64
    config.sampling.num_candidates = 2

    config.train.num_steps = 1000
    config.train.log_every = 50
    config.train.eval_every = 500
    config.train.checkpoint_every = 500
    return config
