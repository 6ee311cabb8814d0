"""The published CLIP architectures, as OpenCLIP model configs, and their `model` config sections.

OpenAI's CLIP (Radford et al. 2021, sec 2.4 and table 20 of appendix E) released ViT-B/32,
ViT-B/16, ViT-L/14 and ViT-L/14@336px; OpenCLIP (Cherti et al. 2023) trained the same layouts
and the larger ViT-H/14 and ViT-bigG/14 on LAION. Every one is a pre-LN ViT with a class token
(no attention pooling) and a causal text transformer pooled at the end-of-text token, each
followed by a bias-free projection, which is what `models/clip.py` computes.

An architecture is written in OpenCLIP's model-config format (`embed_dim`, `quick_gelu`,
`vision_cfg`, `text_cfg`), so any OpenCLIP JSON config of a supported layout can be passed
instead of a name. Names follow OpenCLIP: the activation is GELU unless the name ends in
`-quickgelu`; OpenAI trained its models with quick GELU, so OpenAI's weights need the
`-quickgelu` names (OpenCLIP's `ViT-L-14` with `pretrained="openai"` switches it on the same way).
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

# OpenAI's image normalisation (mean and std of [0, 1] pixels), used by every model here.
OPENAI_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

_TEXT_B = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12)
_TEXT_L = dict(context_length=77, vocab_size=49408, width=768, heads=12, layers=12)
ARCHS: dict[str, dict[str, Any]] = {
    "ViT-B-32": dict(embed_dim=512, vision_cfg=dict(image_size=224, layers=12, width=768, patch_size=32),
                     text_cfg=_TEXT_B),
    "ViT-B-16": dict(embed_dim=512, vision_cfg=dict(image_size=224, layers=12, width=768, patch_size=16),
                     text_cfg=_TEXT_B),
    "ViT-L-14": dict(embed_dim=768, vision_cfg=dict(image_size=224, layers=24, width=1024, patch_size=14),
                     text_cfg=_TEXT_L),
    "ViT-L-14-336": dict(embed_dim=768, vision_cfg=dict(image_size=336, layers=24, width=1024, patch_size=14),
                         text_cfg=_TEXT_L),
    "ViT-H-14": dict(embed_dim=1024,
                     vision_cfg=dict(image_size=224, layers=32, width=1280, head_width=80, patch_size=14),
                     text_cfg=dict(context_length=77, vocab_size=49408, width=1024, heads=16, layers=24)),
    "ViT-bigG-14": dict(embed_dim=1280,
                        vision_cfg=dict(image_size=224, layers=48, width=1664, head_width=104, mlp_ratio=4.9231,
                                        patch_size=14),
                        text_cfg=dict(context_length=77, vocab_size=49408, width=1280, heads=20, layers=32)),
}
QUICK_GELU_SUFFIX = "-quickgelu"

# OpenCLIP config fields we follow, and fields that change nothing here when at these values.
_FIELDS = {"": {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"},
           "vision_cfg.": {"image_size", "layers", "width", "head_width", "patch_size", "mlp_ratio"},
           "text_cfg.": {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}}
_NEUTRAL = {"custom_text": (False,), "patch_dropout": (0, 0.0), "ls_init_value": (None,),
            "attentional_pool": (False,), "pool_type": ("tok", "argmax"), "final_ln_after_pool": (False,),
            "no_ln_pre": (False,), "proj_bias": (False,), "output_tokens": (False,), "embed_cls": (False,),
            "no_causal_mask": (False,), "pad_id": (0,), "pos_embed_type": ("learnable",), "act_kwargs": (None,),
            "norm_kwargs": (None,), "input_patchnorm": (False,), "global_average_pool": (False,),
            "timm_model_name": (None,), "hf_model_name": (None,), "hf_tokenizer_name": ("",)}


def arch_names() -> list[str]:
    """Every accepted architecture name (with and without `-quickgelu`)."""
    return [n for name in ARCHS for n in (name, name + QUICK_GELU_SUFFIX)]


def load_arch(name_or_path: str) -> dict[str, Any]:
    """An architecture by name (`arch_names()`) or from an OpenCLIP model-config JSON file.

    Raises ValueError (one line naming `--arch` or the field) for an unknown name or a layout
    that `models/clip.py` does not compute (a ResNet tower, attention pooling, layer scale, ...).
    """
    if name_or_path.endswith(".json"):
        if not os.path.isfile(name_or_path):
            raise ValueError(f"--arch={name_or_path}: no such file")
        with open(name_or_path, encoding="utf-8") as f:
            arch = json.load(f)
    else:
        base = name_or_path.removesuffix(QUICK_GELU_SUFFIX)
        if base not in ARCHS:
            raise ValueError(f"--arch={name_or_path!r} is unknown; known: {', '.join(arch_names())} "
                             "or an OpenCLIP model-config .json file")
        arch = {**ARCHS[base], "quick_gelu": name_or_path.endswith(QUICK_GELU_SUFFIX)}
    for prefix, known in _FIELDS.items():
        section = arch[prefix[:-1]] if prefix else arch
        for key, value in section.items():
            if key not in known and value not in _NEUTRAL.get(key, ()):
                raise ValueError(f"--arch={name_or_path}: {prefix}{key}={value!r} is not supported (pre-LN ViTs "
                                 "with a class token and causal text transformers pooled at the end token only)")
    if not isinstance(arch["vision_cfg"]["layers"], int):
        raise ValueError(f"--arch={name_or_path}: a ResNet image tower is not supported (ViTs only)")
    return arch


def model_section(arch: dict[str, Any]) -> ml_collections.ConfigDict:
    """The CLIP stage's `model` config section (`stages/clip.model_config`) of an architecture;
    the image size, context length and vocabulary come from the `data` and `tokenizer` sections."""
    vision, text = arch["vision_cfg"], arch["text_cfg"]
    m = ml_collections.ConfigDict()
    m.embed_dim = arch["embed_dim"]
    m.remat = "none"  # block rematerialisation (dalle2_jax.nn.remat)
    m.scan_layers = False  # scan the transformer blocks (smaller compiles of deep stacks; nn.transformer)
    m.activation = "quick_gelu" if arch.get("quick_gelu", False) else "gelu"
    m.vision = ml_collections.ConfigDict(dict(
        patch_size=vision["patch_size"], width=vision["width"], depth=vision["layers"],
        num_heads=vision["width"] // vision.get("head_width", 64), mlp_ratio=float(vision.get("mlp_ratio", 4.0)),
        image_mean=OPENAI_IMAGE_MEAN, image_std=OPENAI_IMAGE_STD))
    m.text = ml_collections.ConfigDict(dict(width=text["width"], depth=text["layers"], num_heads=text["heads"],
                                            mlp_ratio=float(text.get("mlp_ratio", 4.0))))
    return m


def model_config(arch: dict[str, Any]) -> ml_collections.ConfigDict:
    """`model_section(arch)` completed for `CLIP.from_config`: image size, context length,
    vocabulary, and the end-of-text id, the vocabulary's last (CLIP pools at the largest id)."""
    m = model_section(arch)
    m.vision.image_size = arch["vision_cfg"]["image_size"]
    m.text.context_length = arch["text_cfg"]["context_length"]
    m.text.vocab_size = arch["text_cfg"]["vocab_size"]
    m.text.eot_token_id = m.text.vocab_size - 1
    return m
