"""The unCLIP diffusion prior at the paper's size (Ramesh et al. 2022, sec. 2.2, appendix C,
table 3): decoder-only transformer of width 2048 and 24 blocks over [text tokens, text embedding,
timestep, noised image embedding, query], 1000 diffusion steps, 64 strided sampling steps, the
x0 objective; trained on the ViT-H/16 CLIP of `configs/paper/clip_vit_h16.py` (embedding 1024,
text width 1024, context 77): 1,225,638,912 parameters with those sizes (the paper rounds to
"1B"; checked by a test through `eval_shape`).

    python -m dalle2_jax.train --config=configs/paper/prior_1b.py --workdir=gs://BUCKET/prior \
        --config.clip.workdir=gs://BUCKET/clip --config.data.name=YOUR_TFDS_DATASET

Optimizer as in the paper's table 3: AdamW, lr 1.1e-4, decoupled weight decay 6.0e-2, beta2
0.96, eps 1e-6, EMA 0.9999, batch 4096. Not trained by this project: no time or result claimed.
"""

from dalle2_jax import config_schema


def get_config(arg: str | None = None):
    del arg  # no variants
    config = config_schema.for_stage("prior")
    config.dtype = "bfloat16"
    config.clip.workdir = "runs/paper_clip_vit_h16"
    config.data.resolution = 256
    config.data.batch_size = 4096
    config.data.eval_batch_size = 1024

    config.model.width = 2048
    config.model.depth = 24
    config.model.num_heads = 32
    config.model.remat = "full"
    config.model.scan_layers = True  # one scanned block instead of 24: a smaller, faster compile

    config.optim.learning_rate = 1.1e-4
    config.optim.weight_decay = 6.0e-2
    config.optim.b2 = 0.96
    config.optim.eps = 1e-6
    config.optim.ema_decay = 0.9999
    config.optim.warmup_steps = 10_000

    config.diffusion.num_timesteps = 1000
    config.diffusion.objective = "x0"
    config.sampling.num_steps = 64
    config.sampling.num_candidates = 2
    config.prior.embed_scale = 17.2  # the paper's input scaling of ViT-H/16 embeddings

    config.train.num_steps = 600_000
    config.train.log_every = 100
    config.train.eval_every = 10_000
    config.train.checkpoint_every = 2000
    config.mesh.data = 1
    config.mesh.fsdp = -1
    return config
