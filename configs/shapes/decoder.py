"""The unCLIP decoder on the shapes dataset: 32 px images from the shapes CLIP's image embeddings.

Run (2-core CPU), after `configs/shapes/clip.py` has finished in runs/shapes_clip:
    python -m dalle2_jax.train --config=configs/shapes/decoder.py --workdir=runs/shapes_decoder

`clip.workdir` names the CLIP run (override with --config.clip.workdir=DIR). Every evaluation
decodes the CLIP embeddings of validation and held-out images and scores the decoded images'
attributes; the grids of sources and decodings go to TensorBoard and WORKDIR/samples/.

Measured with 1100 steps (the count until 2026-12-07; 1650 now, see train.num_steps below) on
2026-11-27 (this project's 2-core CPU, standalone on the main job's CLIP): 13-19 minutes with two
evaluations (the hour matters; 22 minutes in the main job on the
slower AMD EPYC machine of 2026-11-28, 18 since XLA's convolutions run on Eigen). Decoding true CLIP embeddings of
128 images per split: all five attributes 82.8% validation / 64.8% held-out (background, color
100%; size 98.4 / 93.0%; position 99.2 / 97.7%; shape 83.6 / 65.6%): shape was the weakest.
With 1650 steps and the CLIP embedding scaled inside the UNet (model.clip_embed_scale, 05d7937):
15 min in the main job of 2026-12-07, 32 images per split 100% / 93.8% all five (seed 1: 100 /
87.5%), and as good without a caption (64 images: 98.4 / 70.3%). README has the rest.
"""

from dalle2_jax import config_schema


def get_config(arg: str | None = None):
    del arg  # no variants
    config = config_schema.for_stage("decoder")
    config.clip.workdir = "runs/shapes_clip"
    config.data.batch_size = 32
    config.data.cache_in_memory = True  # decoded once per process (the main job's stages share it)
    config.data.eval_batch_size = 32

    # On 2 x 2 patches (16 x 16 positions, 64 then 128 channels): the same FLOPs per layer as
    # pixels at 32 then 64 channels with one more level, but wider matmuls and half the
    # element-wise work: train step 709 against 899 ms (batch 32, 2 CPU devices), and at 800 steps
    # it decoded as well (128 images: 50.8 / 38.3% all five against 45.3 / 39.1%).
    config.model.patch_size = 2
    config.model.channels = 64
    config.model.channel_mults = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (8,)
    # Layout aids (not in the paper, see models/unet.py): position stayed at chance without them.
    # The spatial CLIP map at 16 x 16 (measured on pixels, channels 32, mults (1, 2, 2): 32 images,
    # decoding true embeddings, 800 steps, all five attributes validation / held-out): 53% / 31% at
    # 16 x 16, against 25% / 25% at 8 x 8 and 28% / 41% at 32 x 32; shape 56% at 16 against 34% at 8.
    # On patches 16 x 16 is the top level. Attention at 16 as well as 8 was no better (32 images,
    # 800 steps: 44 / 41% against 53 / 44%) and 25% slower.
    config.model.coordinate_channels = True
    config.model.clip_spatial = 16

    # x0 with uniform weights: on these flat images it learned colors and backgrounds several
    # times faster than eps (400 steps: clean backgrounds vs noisy images) or min-SNR weighting;
    # v (with the 16 x 16 map, 800 steps) reached 31% / 34% all five against x0's 53% / 31%.
    config.diffusion.objective = "x0"
    # ... weighted by clip(SNR, 1, 5) (diffusion/objectives.py): with uniform weights the nearly
    # clean steps, where corners are drawn, carried almost no weight. DDIM started from true
    # validation images noised to log-SNR 2.6 kept their shape 83% of the time with uniform
    # weights, 98% with these; from log-SNR -0.6, 75% against 95% (64 images, 1100 steps). Decoding
    # true embeddings (128 images per split): 61.7 / 53.9% all five against 60.9 / 39.1%.
    config.diffusion.loss_weighting = "truncated_snr"

    # The caption dropped 10% of the time, not the paper's 50%: the sampled images are drawn with
    # their caption, and shape comes mostly from it (the CLIP embedding alone decoded 25-29% of
    # the prompts with all five right). 128 images per split, with the weighting above, all five:
    # 82.8 / 64.8% at 10%, 68.8 / 55.5% at 20%, 61.7 / 53.9% at 50%. Both dropped, the guidance's
    # unconditional model, is then 1% of the examples (0.1 x 0.1). Guidance 2 against 1 (weighting
    # above, caption dropped 50%, 64 validation images): 64% against 55% all five. These were
    # measured before the UNet scaled the CLIP embedding to unit variance per coordinate
    # (model.clip_embed_scale, 05d7937): the embedding then entered ~11x weaker than the caption.
    # Since, at 10% the decoder decodes true embeddings without any caption as well as with one
    # (64 images, fresh noise: 98.4 / 70.3% all five, validation / held-out, against 25.0 / 10.9%).
    config.decoder.text_drop_prob = 0.1

    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 100
    config.optim.weight_decay = 0.0
    config.optim.ema_decay = 0.999

    # The manipulations' DDIM noise (pipeline.py). The DDIM-inverted latent of a flat render has
    # std ~50, not 1: it encodes the image, and eta decides how much of it the decoding keeps.
    # Before the UNet scaled the CLIP embedding (model.clip_embed_scale), the caption-less decoder
    # lost the shape at eta 1 (22% of variations kept all five attributes), so shapes used 0.9.
    # Since (05d7937, the main job's CLIP and prior, 24 validation images, 4 variations each, the
    # manipulations then guided with 2, see below):
    # eta 0.9 / 1 kept all five 100 / 95.8% of the time and the variations differed from one
    # another by 2.1 / 2.4 (mean absolute pixel difference, 0-255; the dataset's own renders of
    # the same five attributes differ by 3.3): 1, the default, varies them most like the data.
    # Text diffs (red -> the next color, theta 0.25 / 0.5 / 0.75), the paper's (no caption):
    # at eta 0.9 66.7 / 95.8 / 83.3% took the new color and 50 / 74 / 20% of those kept the other
    # four; at eta 0 54.2 / 95.8 / 83.3% and 92 / 61 / 20%. Given the captions as well, at 0.9
    # 100% took it and 92 / 88 / 43% kept the rest; at 0 83 / 83 / 92% and 70 / 65 / 41%.
    config.decoder.text_diff_eta = 0.9
    # The manipulations decode with the conditional model alone (guidance 1), text to image with
    # guidance 2. With 05d7937's decoder, which follows the embedding, guidance 2's DDIM inversion
    # round-tripped 79.2% of 24 validation images with all five attributes (1 and 2 refinements
    # per step too, 6: 70.8%), the unguided one 100%. The fresh main job of 2f8bd9c, 24 sources,
    # guidance 1 against 2: interpolation endpoints 100 / 79.2%; variations (eta 1) kept all five
    # 96.9 / 95.8% and differed by 3.8 / 2.4 (the data: 3.3); the paper's text diffs (eta 0.9,
    # theta 0.25 / 0.5 / 0.75) took the new color 20.8 / 95.8 / 83.3% (66.7 / 95.8 / 83.3%) and of
    # those kept the rest 80 / 83 / 35% (50 / 74 / 20%).
    config.decoder.manipulation_guidance_scale = 1.0
    config.decoder.eval_limit = 32
    config.sampling.num_steps = 25
    config.sampling.guidance_scale = 2.0

    # 1100 steps against 800 on patches (128 images, all five): 60.9 / 39.1% against 50.8 / 38.3%.
    # 1650 against 1100 (the main job's CLIP, prior and upsampler of 4de21b8, 2026-12-07): the
    # 1100-step decoder's outcome varied from run to run with float-level changes (4de21b8's
    # GroupNorm, the same function: its main job drew 77.1% of the seen captions all five right
    # and decoded 71.9% of 32 validation images, where the runs before it drew 91.7% and 81.3%);
    # at 1650 steps 93.8% and 90.6% (seed 0), 93.8% and 96.9% (`seed=1`); held-out captions 75.0
    # and 41.7% (against 54.2-62.5%): they still vary. The faster GroupNorm and the huge pages pay
    # for the extra 550 steps within the main job's 45 minutes.
    config.train.num_steps = 1650
    config.train.log_every = 50
    config.train.eval_every = 825
    config.train.checkpoint_every = 825
    return config
