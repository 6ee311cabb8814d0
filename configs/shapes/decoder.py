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
100%; size 98.4 / 93.0%; position 99.2 / 97.7%; shape 83.6 / 65.6%): shape is still the weakest.
README has the rest.
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
    # above, caption dropped 50%, 64 validation images): 64% against 55% all five. The cost: the
    # manipulations decode without a caption, and learn that case from fewer examples (README).
    config.decoder.text_drop_prob = 0.1

    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 100
    config.optim.weight_decay = 0.0
    config.optim.ema_decay = 0.999

    # The manipulations' DDIM noise (pipeline.py). From the DDIM-inverted latent of a flat render
    # (std ~50, not 1: it encodes the image), variations of 16 validation images (4 each, the main
    # job's run of caa5c80) kept all five attributes 96.9 / 89.1 / 82.8 / 78.1 / 21.9% of the time
    # at eta 0.75 / 0.85 / 0.9 / 0.95 / 1, differing from one another by 1.6 / 2.4 / 3.1 / 4.1 / 11.1
    # (mean absolute pixel difference, 0-255): 0.9 varies them as much as the dataset's own renders
    # of the same five attributes vary (3.4), more than that changes attributes. Text diffs (red ->
    # the next color, the same 16 images, theta 0.25 / 0.5 / 0.75) at eta 0.9 against the paper's 0:
    # with the captions, 100% took the new color and 81 / 81 / 75% of those kept the other four
    # (against 75% and 50%); the paper's (no caption) took it 0 / 19 / 31% (against 0 / 13 / 19%).
    config.decoder.variation_eta = 0.9
    config.decoder.text_diff_eta = 0.9
    # The manipulations keep text to image's guidance 2 (decoder.manipulation_guidance_scale = 0).
    # At 4 the paper's caption-less text diffs took the new color more often (24 validation
    # images, eta 0.9, theta 0.25 / 0.5 / 0.75: 25 / 38 / 54% against 0 / 17 / 33%), but the
    # guided inversion round-tripped worse (interpolation endpoints 67% against 100%) and the
    # variations kept all five attributes 64% of the time against 84%.
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
