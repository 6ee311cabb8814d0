"""The unCLIP diffusion prior of `configs/paper/prior_1b.py` (width 2048, 24 blocks, x0 objective,
64 sampling steps, the paper's optimizer) on an imported OpenAI CLIP ViT-L/14, Karlo's setting
(kakaobrain/karlo conditions its prior and decoder on ViT-L/14: embedding 768, text width 768,
context 77, CLIP's BPE tokenizer). Only the CLIP and the embedding scale differ from prior_1b.py.

    python -m dalle2_jax.convert_clip --checkpoint=open_clip_model.safetensors \
        --arch=ViT-L-14-quickgelu --dtype=bfloat16 --out=gs://BUCKET/clip_vit_l14
    python -m dalle2_jax.train --config=configs/paper/prior_vit_l14.py --workdir=gs://BUCKET/prior_l14 \
        --config.clip.pretrained=gs://BUCKET/clip_vit_l14 --config.data.name=YOUR_TFDS_DATASET

(open_clip_model.safetensors: OpenAI's ViT-L/14 weights in OpenCLIP's layout, e.g. from the
Hugging Face hub's timm/vit_large_patch14_clip_224.openai.) The embedding scale keeps the
paper's per-coordinate variance: 17.2 for 1024 dimensions is 17.2 * sqrt(768 / 1024) = 14.9 for
768. Not trained by this project: no time or result claimed.
"""

import math
import os

from dalle2_jax import config_schema

PRIOR_1B = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prior_1b.py")


def get_config(arg: str | None = None):
    del arg  # no variants
    config = config_schema.from_file(PRIOR_1B)
    config.clip.workdir = ""
    config.clip.pretrained = "runs/clip_vit_l14"  # python -m dalle2_jax.convert_clip --out=...
    config.prior.embed_scale = 17.2 * math.sqrt(768 / 1024)
    return config
