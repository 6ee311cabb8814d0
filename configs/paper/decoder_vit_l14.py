"""The unCLIP decoder of `configs/paper/decoder_3p5b.py` (GLIDE's 3.5B UNet at 64 px, 4 CLIP
context tokens, learned variance) on an imported OpenAI CLIP ViT-L/14, Karlo's setting
(kakaobrain/karlo conditions its decoder on ViT-L/14 image embeddings: 768 dimensions; the
caption encoder reads CLIP's BPE tokens, 49,408 ids, context 77). Only the CLIP differs from
decoder_3p5b.py.

    python -m dalle2_jax.convert_clip --checkpoint=open_clip_model.safetensors \
        --arch=ViT-L-14-quickgelu --dtype=bfloat16 --out=gs://BUCKET/clip_vit_l14
    python -m dalle2_jax.train --config=configs/paper/decoder_vit_l14.py --workdir=gs://BUCKET/decoder_l14 \
        --config.clip.pretrained=gs://BUCKET/clip_vit_l14 --config.data.name=YOUR_TFDS_DATASET

Images are resized from 64 px to CLIP's 224 px and normalised with OpenAI's pixel statistics
inside the train step. Not trained by this project: no time or result claimed.
"""

import os

from dalle2_jax import config_schema

DECODER_3P5B = os.path.join(os.path.dirname(os.path.abspath(__file__)), "decoder_3p5b.py")


def get_config(arg: str | None = None):
    del arg  # no variants
    config = config_schema.from_file(DECODER_3P5B)
    config.clip.workdir = ""
    config.clip.pretrained = "runs/clip_vit_l14"  # python -m dalle2_jax.convert_clip --out=...
    return config
