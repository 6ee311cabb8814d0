"""The second unCLIP upsampler at the paper's size (Ramesh et al. 2022, sec. 2.1, appendix C, table 3):
256 -> 1024 px, a convolutional ADM UNet without attention (channels 192, 2 residual blocks per
level, multipliers 1, 1, 2, 2, 4, 4), linear schedule, trained on 256 px random crops of 1024 px
images with BSR conditioning augmentation; 15 sampling steps. About 300M parameters (checked by a
test through `eval_shape`).

    python -m dalle2_jax.train --config=configs/paper/upsampler_1024.py --workdir=gs://BUCKET/up1024 \
        --config.data.name=YOUR_TFDS_DATASET

Batch 512 as in the paper; optimizer settings and step counts are our choices. The built-in shapes
data stops at 256 px, so this config needs a real dataset. Not trained by this project.
"""

from dalle2_jax import config_schema


def get_config(arg: str | None = None):
    del arg  # no variants
    config = config_schema.for_stage("upsampler")
    config.dtype = "bfloat16"
    config.data.resolution = 1024
    config.data.batch_size = 512
    config.data.eval_batch_size = 256

    config.model.image_size = 1024
    config.model.channels = 192
    config.model.channel_mults = (1, 1, 2, 2, 4, 4)
    config.model.num_res_blocks = 2
    config.model.remat = "full"

    config.upsampler.low_res_size = 256
    config.upsampler.crop_size = 0  # a quarter of the side: 256 px crops
    config.upsampler.degradation = "bsr"
    config.diffusion.schedule = "linear"
    config.sampling.num_steps = 15

    config.optim.learning_rate = 1.0e-4
    config.optim.weight_decay = 0.0
    config.optim.b2 = 0.999
    config.optim.ema_decay = 0.9999
    config.optim.warmup_steps = 10_000
    config.train.num_steps = 1_000_000
    config.train.log_every = 100
    config.train.eval_every = 10_000
    config.train.checkpoint_every = 2000
    return config
