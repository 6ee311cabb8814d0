"""The first unCLIP upsampler on shapes: 32 px -> 64 px, trained on random crops of 64 px images.

Run (2-core CPU; needs no other stage):
    python -m dalle2_jax.train --config=configs/shapes/upsampler.py --workdir=runs/shapes_upsampler

The shapes dataset is generated at 64 px for it (same examples as the 32 px one, drawn from the
same seeds). Evaluations upsample downsampled validation / held-out images: PSNR and attribute
accuracy at 64 px, and a grid of low-res | upsampled | true in WORKDIR/samples/.

Measured (2026-11-27, this project's 2-core CPU, inside the README main job): 7 min 31 s wall
including generating the 64 px dataset (400 steps at ~1.15 steps/s). Upsampled 32 -> 64 px
validation / held-out images: all five attributes right 100% / 100%, PSNR 23.4 / 23.7 dB. The
main job now stops it at 300 steps (6 min 52 s there): still 100% / 100%, PSNR 22.8 / 23.0 dB.
"""

from dalle2_jax import config_schema


def get_config(arg: str | None = None):
    del arg  # no variants
    config = config_schema.for_stage("upsampler")
    config.data.resolution = 64
    config.data.train_size = 20_000
    config.data.batch_size = 32
    config.data.cache_in_memory = True  # decoded once per process (the main job's stages share it)
    config.data.eval_batch_size = 32

    config.model.image_size = 64
    config.model.channels = 32
    config.model.channel_mults = (1, 2)
    config.model.num_res_blocks = 1

    config.upsampler.low_res_size = 32
    config.upsampler.crop_size = 32  # half the side: shapes are up to 32 px wide at 64 px
    config.upsampler.degradation = "blur"
    config.upsampler.eval_limit = 32

    config.diffusion.objective = "x0"  # as the shapes decoder: fastest to learn on flat images

    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 50
    config.optim.weight_decay = 0.0
    config.optim.ema_decay = 0.999

    config.sampling.num_steps = 20

    config.train.num_steps = 400
    config.train.log_every = 50
    config.train.eval_every = 400
    config.train.checkpoint_every = 400
    return config
