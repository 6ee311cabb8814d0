"""The first unCLIP upsampler at the paper's size (Ramesh et al. 2022, sec. 2.1, appendix C, table 3):
64 -> 256 px, a convolutional ADM UNet without attention (channels 320, 3 residual blocks per
level, multipliers 1, 2, 3, 4), cosine schedule, trained on 64 px random crops of 256 px images
with Gaussian-blur conditioning augmentation; 27 sampling steps. About 700M parameters (checked
by a test through `eval_shape`).

    python -m dalle2_jax.train --config=configs/paper/upsampler_256.py --workdir=gs://BUCKET/up256 \
        --config.data.name=YOUR_TFDS_DATASET

Batch 1024 as in the paper; optimizer settings and step counts are our choices. Not trained by
this project: no time or result claimed.
"""

from dalle2_jax import config_schema


def get_config(arg: str | None = None):
    del arg  # no variants
    config = config_schema.for_stage("upsampler")
    config.dtype = "bfloat16"
    config.data.resolution = 256
    config.data.batch_size = 1024
    config.data.eval_batch_size = 256

    config.model.image_size = 256
    config.model.channels = 320
    config.model.channel_mults = (1, 2, 3, 4)
    config.model.num_res_blocks = 3
    config.model.remat = "full"

    config.upsampler.low_res_size = 64
    config.upsampler.crop_size = 0  # a quarter of the side: 64 px crops
    config.upsampler.degradation = "blur"
    config.diffusion.schedule = "cosine"
    config.sampling.num_steps = 27

    config.optim.learning_rate = 1.2e-4
    config.optim.weight_decay = 0.0
    config.optim.b2 = 0.999
    config.optim.ema_decay = 0.9999
    config.optim.warmup_steps = 10_000
    config.train.num_steps = 1_000_000
    config.train.log_every = 100
    config.train.eval_every = 10_000
    config.train.checkpoint_every = 2000
    return config
