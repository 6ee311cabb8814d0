"""The unCLIP decoder at the paper's size (Ramesh et al. 2022, sec. 2.1, appendix C, table 3): GLIDE's
3.5B UNet at 64 px (channels 512, 3 residual blocks per level, multipliers 1, 2, 3, 4, attention
at 32, 16 and 8 px with 64-channel heads, text encoder of width 2048 and 24 blocks), conditioned
on the ViT-H/16 CLIP of `configs/paper/clip_vit_h16.py` (embedding 1024) through 4 extra context
tokens and the timestep embedding; learned variance (hybrid loss), cosine schedule, 1000 steps,
CLIP embeddings dropped 10% and captions 50% of the time.
3,564,913,158 parameters with GLIDE's text encoder sizes (vocabulary 50257, context 256); with
this CLIP's tokenizer (49408 tokens, context 77; the caption encoder reads CLIP's tokens) it is
checked by a test through `eval_shape` against the paper's 3.5B.

    python -m dalle2_jax.train --config=configs/paper/decoder_3p5b.py --workdir=gs://BUCKET/decoder \
        --config.clip.workdir=gs://BUCKET/clip --config.data.name=YOUR_TFDS_DATASET

Optimizer, batch and schedule follow the paper's decoder row of table 3 where it gives them
(batch 2048, Adam, lr 1.2e-4, EMA 0.9999, dropout 0.1); warmup and steps are our choices. Not
trained by this project: no time or result claimed.
"""

from dalle2_jax import config_schema


def get_config(arg: str | None = None):
    del arg  # no variants
    config = config_schema.for_stage("decoder")
    config.dtype = "bfloat16"
    config.clip.workdir = "runs/paper_clip_vit_h16"
    config.data.resolution = 64
    config.data.batch_size = 2048
    config.data.eval_batch_size = 256

    config.model.image_size = 64
    config.model.channels = 512
    config.model.channel_mults = (1, 2, 3, 4)
    config.model.num_res_blocks = 3
    config.model.attention_resolutions = (32, 16, 8)
    config.model.head_channels = 64
    config.model.dropout = 0.1
    config.model.remat = "full"
    config.model.scan_layers = True  # the caption encoder's 24 blocks as one scanned block
    config.model.text.width = 2048
    config.model.text.depth = 24
    config.model.text.num_heads = 32

    config.diffusion.schedule = "cosine"
    config.diffusion.objective = "eps"
    config.diffusion.learned_variance = True
    config.decoder.clip_drop_prob = 0.1
    config.decoder.text_drop_prob = 0.5
    config.sampling.sampler = "ddpm"
    config.sampling.num_steps = 250
    config.sampling.guidance_scale = 3.0

    config.optim.learning_rate = 1.2e-4
    config.optim.weight_decay = 0.0
    config.optim.b2 = 0.999
    config.optim.ema_decay = 0.9999
    config.optim.warmup_steps = 10_000
    config.train.num_steps = 800_000
    config.train.log_every = 100
    config.train.eval_every = 10_000
    config.train.checkpoint_every = 2000
    config.mesh.data = 1
    config.mesh.fsdp = -1
    return config
