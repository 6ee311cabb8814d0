"""CLIP ViT-H/16 at the paper's size (unCLIP sec. 2 and appendix C: the CLIP whose embeddings
the prior and decoder use): 256 px, patch 16, vision width 1280 x 32 blocks, text width 1024 x 24
blocks, context 77, embedding 1024; 986,339,841 parameters (checked by tests through `eval_shape`).

    python -m dalle2_jax.train --config=configs/paper/clip_vit_h16.py --workdir=gs://BUCKET/clip \
        --config.data.name=YOUR_TFDS_DATASET --config.data.data_dir=gs://BUCKET/tfds

Not trained by this project (no pod was available): no wall time or result is claimed. The
optimizer follows CLIP's (Radford et al. 2021, sec. 2.5 / appendix F: AdamW, decoupled weight
decay 0.2, beta2 0.98, eps 1e-6, warmup 2000, cosine decay, batch 32768). The default data is the
built-in shapes set at 256 px so that the config runs end to end anywhere; real pretraining names
an image-caption TFDS dataset (features `image`, `caption`) prepared in array_record format.

The tokenizer is the hashed-word stand-in with CLIP's vocabulary size (49408) and context (77)
until the CLIP BPE tokenizer lands (same sizes, so the same parameter count).
"""

from dalle2_jax import config_schema


def get_config(arg: str | None = None):
    del arg  # no variants
    config = config_schema.for_stage("clip")
    config.dtype = "bfloat16"
    config.data.resolution = 256
    config.data.batch_size = 32768
    config.data.eval_batch_size = 1024
    config.tokenizer.kind = "words"
    config.tokenizer.vocab_size = 49408
    config.tokenizer.context_length = 77

    config.model.embed_dim = 1024
    config.model.remat = "full"
    # One scanned block per tower instead of 32 + 24 unrolled ones: this step compiles for
    # v5p-256 in 110 s and 3.5 GiB of host RAM, and the decoder's step (which runs this ViT-H)
    # shrinks too (README, AOT table).
    config.model.scan_layers = True
    config.model.vision.patch_size = 16
    config.model.vision.width = 1280
    config.model.vision.depth = 32
    config.model.vision.num_heads = 16
    config.model.text.width = 1024
    config.model.text.depth = 24
    config.model.text.num_heads = 16

    config.optim.learning_rate = 4e-4
    config.optim.warmup_steps = 2000
    config.optim.weight_decay = 0.2
    config.optim.b2 = 0.98
    config.optim.eps = 1e-6

    config.train.num_steps = 390_000  # ~32 epochs of 400M pairs at batch 32768
    config.train.log_every = 100
    config.train.eval_every = 5000
    config.train.checkpoint_every = 2000

    # Parameters, gradients and optimizer state sharded over every device (FSDP); on a pod
    # slice set e.g. --config.mesh.data=16 --config.mesh.fsdp=16.
    config.mesh.data = 1
    config.mesh.fsdp = -1
    return config
