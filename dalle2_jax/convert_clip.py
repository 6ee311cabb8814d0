"""Converts an OpenAI CLIP or OpenCLIP checkpoint into a frozen CLIP for the prior and decoder.

    python -m dalle2_jax.convert_clip --checkpoint=open_clip_model.safetensors --arch=ViT-L-14-quickgelu \\
        --out=runs/clip_vit_l14

unCLIP's prior and decoder condition on a frozen CLIP (Ramesh et al. 2022, sec 2); this imports
the published ones (Radford et al. 2021; OpenCLIP, Cherti et al. 2023) instead of training one.
`--arch` is one of `models/clip_archs.arch_names()` (OpenAI's weights need the `-quickgelu`
names) or an OpenCLIP model-config JSON file. The checkpoint is a safetensors file, or a torch
file read with `torch.load(weights_only=True)` (torch imported only then), in the key layout of
OpenAI's `CLIP` module, which OpenCLIP's `CLIP` shares (`visual.conv1.weight`,
`transformer.resblocks.0.attn.in_proj_weight`, ...), or of Hugging Face `transformers`'
`CLIPModel` (`vision_model.encoder.layers.0.self_attn.q_proj.weight`, ...: OpenAI's weights as
published on the hub as openai/clip-vit-large-patch14); OpenAI's `input_resolution` /
`context_length` / `vocab_size` entries are checked against the arch, a training checkpoint's
`state_dict` wrapper and `module.` prefixes are removed. A key that has no place in the arch,
a missing key or a shape that does not fit is refused with one line naming it.

`--scan_layers` writes each tower's blocks stacked for a scanned transformer (`model.scan_layers`,
see `nn/transformer.py`: the layout for deep towers such as ViT-H at pod scale).

`--out` gets the layout of a finished CLIP run, which `clip.pretrained` (or `clip.workdir`)
reads: `config.json` (a CLIP config: the arch, CLIP's BPE tokenizer, the image size and OpenAI's
pixel statistics), `checkpoints/0/state` (Orbax: the float32 parameters), CLIP's BPE merges file
and `pretrained.json` (where it came from).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
OPENAI, HUGGING_FACE = "OpenAI/OpenCLIP", "Hugging Face transformers"  # the key layouts read
# Buffers that hold no weights: token positions 0..L-1 in some Hugging Face files.
IGNORED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
# Entries of OpenAI's released files that hold sizes, not weights: (arch field, where it is).
OPENAI_SIZES = {"input_resolution": ("vision_cfg", "image_size"), "context_length": ("text_cfg", "context_length"),
                "vocab_size": ("text_cfg", "vocab_size")}

Path = tuple[str, ...]
Placement = list[tuple[Path, Callable[[np.ndarray], np.ndarray]]]


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the key or file."""


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ConversionError(f"--checkpoint={path}: reading a torch file needs torch installed "
                              "(or convert the safetensors file of the same weights)") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for files it will not unpickle
        raise ConversionError(
            f"--checkpoint={path}: torch.load(weights_only=True) cannot read it ({str(e).splitlines()[0][:160]}); "
            "OpenAI's original .pt files are TorchScript archives: use the safetensors of the same weights "
            "(e.g. the Hugging Face hub's timm/vit_large_patch14_clip_224.openai open_clip_model.safetensors)"
        ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ConversionError(f"--checkpoint={path}: holds a {type(state).__name__}, not a state dict")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items() if isinstance(v, torch.Tensor)}


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
    """A checkpoint's tensors by key (float tensors as float32), in the file's key order, with a
    training checkpoint's `state_dict` wrapper and `module.` prefixes removed."""
    if not os.path.isfile(path):
        raise ConversionError(f"--checkpoint={path}: no such file")
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        # float16, float32 and bfloat16 (an ml_dtypes type, of numpy kind "V") become float32
        tensors = {k: v.astype(np.float32) if v.dtype.kind in "fV" else v for k, v in tensors.items()}
    elif path.endswith(TORCH_SUFFIXES):
        tensors = _read_torch(path)
    else:
        raise ConversionError(f"--checkpoint={path}: expected a .safetensors file or a torch file "
                              f"({', '.join(TORCH_SUFFIXES)})")
    return {k.removeprefix("module."): v for k, v in tensors.items()}


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _transposed(x: np.ndarray) -> np.ndarray:
    return x.T


def _layer_norm(theirs: str, ours: Path) -> dict[str, Placement]:
    return {f"{theirs}.weight": [((*ours, "scale"), _same)], f"{theirs}.bias": [((*ours, "bias"), _same)]}


def _linear(theirs: str, ours: Path, kernel: Callable[[np.ndarray], np.ndarray] = _transposed,
            bias: Callable[[np.ndarray], np.ndarray] = _same) -> dict[str, Placement]:
    """A torch Linear ([out, in] weight) as our Dense ([in, out] kernel)."""
    return {f"{theirs}.weight": [((*ours, "kernel"), kernel)], f"{theirs}.bias": [((*ours, "bias"), bias)]}


# Per layout: the names of one transformer block's parts (attention projections: fused q/k/v in
# OpenAI's `in_proj`, separate in Hugging Face's), then of the embeddings, norms and projections.
_BLOCK_NAMES = {
    OPENAI: dict(ln_attn="ln_1", ln_mlp="ln_2", out="attn.out_proj", fc_in="mlp.c_fc", fc_out="mlp.c_proj"),
    HUGGING_FACE: dict(ln_attn="layer_norm1", ln_mlp="layer_norm2", out="self_attn.out_proj", fc_in="mlp.fc1",
                       fc_out="mlp.fc2", query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj"),
}
_NAMES = {
    OPENAI: dict(patches="visual.conv1.weight", class_token="visual.class_embedding",
                 vision_positions="visual.positional_embedding", ln_pre="visual.ln_pre", ln_post="visual.ln_post",
                 vision_projection="visual.proj", vision_blocks="visual.transformer.resblocks.",
                 tokens="token_embedding.weight", text_positions="positional_embedding", ln_final="ln_final",
                 text_projection="text_projection", text_blocks="transformer.resblocks."),
    HUGGING_FACE: dict(patches="vision_model.embeddings.patch_embedding.weight",
                       class_token="vision_model.embeddings.class_embedding",
                       vision_positions="vision_model.embeddings.position_embedding.weight",
                       ln_pre="vision_model.pre_layrnorm", ln_post="vision_model.post_layernorm",
                       vision_projection="visual_projection.weight", vision_blocks="vision_model.encoder.layers.",
                       tokens="text_model.embeddings.token_embedding.weight",
                       text_positions="text_model.embeddings.position_embedding.weight",
                       ln_final="text_model.final_layer_norm", text_projection="text_projection.weight",
                       text_blocks="text_model.encoder.layers."),
}


def _tower(layout: str, theirs: str, ours: Path, depth: int, width: int, heads: int) -> dict[str, Placement]:
    """Where each key of one transformer goes (torch Linear weights are [out, in]; ours are
    [in, out], with attention split into heads)."""
    head_dim = width // heads

    def heads_in(w: np.ndarray) -> np.ndarray:
        return w.T.reshape(width, heads, head_dim)

    def heads_bias(b: np.ndarray) -> np.ndarray:
        return b.reshape(heads, head_dim)

    def heads_out(w: np.ndarray) -> np.ndarray:
        return w.T.reshape(heads, head_dim, width)

    def part(i: int, transform: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        return lambda x: transform(x[i * width:(i + 1) * width])

    names, qkv = _BLOCK_NAMES[layout], ("query", "key", "value")
    table: dict[str, Placement] = {}
    for b in range(depth):
        t, o = f"{theirs}{b}.", (*ours, "transformer", f"block_{b}")
        if layout == OPENAI:
            for kind, transform in (("weight", heads_in), ("bias", heads_bias)):
                table[f"{t}attn.in_proj_{kind}"] = [((*o, "attn", n, "kernel" if kind == "weight" else "bias"),
                                                     part(i, transform)) for i, n in enumerate(qkv)]
        else:
            for n in qkv:
                table.update(_linear(t + names[n], (*o, "attn", n), heads_in, heads_bias))
        table.update({
            **_linear(t + names["out"], (*o, "attn", "out"), heads_out),
            **_layer_norm(t + names["ln_attn"], (*o, "ln_attn")),
            **_layer_norm(t + names["ln_mlp"], (*o, "ln_mlp")),
            **_linear(t + names["fc_in"], (*o, "mlp", "fc_in")),
            **_linear(t + names["fc_out"], (*o, "mlp", "fc_out")),
        })
    return table


def key_table(model_cfg: Any, layout: str) -> dict[str, Placement]:
    """Every key of a CLIP state dict of this model config in `layout`, and where it goes in our
    parameters (`models/clip.py`)."""
    v, t, n = model_cfg.vision, model_cfg.text, _NAMES[layout]
    p = v.patch_size
    # OpenAI keeps its projections as [width, embed] matrices; Hugging Face as [embed, width] Linears.
    projection = _same if layout == OPENAI else _transposed
    return {
        # conv [width, 3, p, p] -> our patch kernel over (row, column, channel)-flattened patches
        n["patches"]: [(("vision", "patch_embedding", "kernel"),
                        lambda w: w.transpose(2, 3, 1, 0).reshape(p * p * w.shape[1], w.shape[0]))],
        n["class_token"]: [(("vision", "class_token"), _same)],
        n["vision_positions"]: [(("vision", "position_embedding"), _same)],
        n["vision_projection"]: [(("vision", "projection", "kernel"), projection)],
        n["tokens"]: [(("text", "token_embedding", "embedding"), _same)],
        n["text_positions"]: [(("text", "position_embedding"), _same)],
        n["text_projection"]: [(("text", "projection", "kernel"), projection)],
        "logit_scale": [(("log_logit_scale",), lambda x: x.reshape(()))],
        **_layer_norm(n["ln_pre"], ("vision", "ln_pre")),
        **_layer_norm(n["ln_post"], ("vision", "ln_post")),
        **_layer_norm(n["ln_final"], ("text", "ln_final")),
        **_tower(layout, n["vision_blocks"], ("vision",), v.depth, v.width, v.num_heads),
        **_tower(layout, n["text_blocks"], ("text",), t.depth, t.width, t.num_heads),
    }


def key_layout(keys: list[str]) -> str:
    """OPENAI (OpenAI's and OpenCLIP's `CLIP` modules) or HUGGING_FACE (`transformers`' CLIPModel)."""
    return HUGGING_FACE if any(k.startswith(("vision_model.", "text_model.")) for k in keys) else OPENAI


def expected_shapes(model_cfg: Any) -> dict[Path, tuple[int, ...]]:
    """Our parameter paths and shapes for a model config (from shapes only, nothing allocated)."""
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from dalle2_jax.models.clip import CLIP

    model = CLIP.from_config(model_cfg)
    size = model_cfg.vision.image_size
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((1, model_cfg.text.context_length), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), images, tokens)["params"]
    return {path: tuple(box.value.shape) for path, box in traverse_util.flatten_dict(params).items()}


def convert(tensors: dict[str, np.ndarray], arch: dict[str, Any], arch_name: str) -> dict[str, Any]:
    """Our CLIP parameters (nested dicts of float32 arrays) from an OpenAI-layout state dict.

    Raises ConversionError naming the first key with no place in `arch` (and how many expected
    keys are missing), a missing key, a shape that does not fit, or a size entry that disagrees.
    """
    from flax import traverse_util

    from dalle2_jax.models import clip_archs

    model_cfg = clip_archs.model_config(arch)
    layout = key_layout(list(tensors))
    table, shapes = key_table(model_cfg, layout), expected_shapes(model_cfg)
    unplaced = [k for k in tensors if k not in table and k not in OPENAI_SIZES and k not in IGNORED]
    missing = [k for k in table if k not in tensors]
    if unplaced:
        raise ConversionError(
            f"checkpoint key {unplaced[0]!r} has no place in --arch={arch_name} ({len(unplaced)} such keys; "
            f"{len(missing)} expected keys missing{': ' + ', '.join(missing[:3]) if missing else ''}); "
            f"read as a CLIP in {layout}'s key layout")
    if missing:
        raise ConversionError(f"checkpoint lacks {len(missing)} keys of --arch={arch_name} in {layout}'s key "
                              f"layout, the first {missing[0]!r}")
    for key, (section, field) in OPENAI_SIZES.items():
        if key in tensors and int(tensors[key]) != arch[section][field]:
            raise ConversionError(f"checkpoint entry {key}={int(tensors[key])} does not match --arch={arch_name} "
                                  f"({section}.{field}={arch[section][field]})")
    params: dict[Path, np.ndarray] = {}
    for key, placements in table.items():
        array = tensors[key]
        for path, transform in placements:
            try:
                value = np.array(transform(array), np.float32, order="C")
            except ValueError:
                value = None
            if value is None or value.shape != shapes[path]:
                raise ConversionError(f"checkpoint key {key!r} of shape {list(array.shape)} does not fit "
                                      f"--arch={arch_name} ({'/'.join(path)} expects {shapes[path]})")
            params[path] = value
    return traverse_util.unflatten_dict(params)


def pretrained_config(arch: dict[str, Any], dtype: str = "float32", scan_layers: bool = False) -> Any:
    """The CLIP config (`config.json`) of a converted checkpoint: the arch's model section, CLIP's
    BPE tokenizer, image size, the compute dtype the frozen CLIP runs in and the transformers'
    layout (`model.scan_layers`); `train.num_steps = 0` (the checkpoint is step 0)."""
    from dalle2_jax import config_schema
    from dalle2_jax.models import clip_archs

    config = config_schema.for_stage("clip")
    for field, value in clip_archs.model_section(arch).to_dict().items():
        if isinstance(value, dict):
            config.model[field].update(value)
        else:
            config.model[field] = value
    config.data.resolution = arch["vision_cfg"]["image_size"]
    config.tokenizer.kind = "clip_bpe"
    config.tokenizer.context_length = arch["text_cfg"]["context_length"]
    config.train.num_steps = 0
    config.dtype = dtype
    config.model.scan_layers = scan_layers
    return config


def scanned(params: dict[str, Any], arch: dict[str, Any]) -> dict[str, Any]:
    """`convert`'s parameters with each tower's blocks stacked for `model.scan_layers`."""
    from dalle2_jax.nn.transformer import stack_blocks

    depths = {"vision": arch["vision_cfg"]["layers"], "text": arch["text_cfg"]["layers"]}
    return {**params, **{tower: {**params[tower], "transformer": stack_blocks(params[tower]["transformer"], depth)}
                         for tower, depth in depths.items()}}


def write_pretrained(out: str, params: dict[str, Any], config: Any, merges_file: str,
                     source: dict[str, Any]) -> None:
    """Writes `out` (a local path or any etils.epath one, e.g. gs://) in the layout of a finished
    CLIP run (see the module docstring)."""
    import orbax.checkpoint as ocp
    from etils import epath

    from dalle2_jax.data.clip_bpe import MERGES_FILE
    from dalle2_jax.stages.frozen_clip import PRETRAINED_MARKER

    path = epath.Path(out)
    path.mkdir(parents=True, exist_ok=True)
    with ocp.CheckpointManager(path.absolute() / "checkpoints",
                               item_handlers={"state": ocp.StandardCheckpointHandler()}) as manager:
        manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
        manager.wait_until_finished()
    (path / MERGES_FILE).write_bytes(epath.Path(merges_file).read_bytes())
    (path / "config.json").write_text(config.to_json(sort_keys=True, indent=2))
    (path / PRETRAINED_MARKER).write_text(json.dumps(source, indent=2))


def convert_checkpoint(checkpoint: str, arch_name: str, out: str, bpe_path: str = "", overwrite: bool = False,
                       dtype: str = "float32", scan_layers: bool = False) -> str:
    """Reads, checks, converts and writes; returns a one-line summary. Every check (arch, merges
    file, output directory, keys and shapes) runs before anything is written."""
    from etils import epath
    from flax import traverse_util

    from dalle2_jax.data.clip_bpe import ClipBpeTokenizer, find_merges_file
    from dalle2_jax.models import clip_archs
    from dalle2_jax.stages.frozen_clip import PRETRAINED_MARKER

    arch = clip_archs.load_arch(arch_name)
    if arch["text_cfg"]["vocab_size"] != ClipBpeTokenizer.vocab_size:
        raise ConversionError(f"--arch={arch_name}: text_cfg.vocab_size={arch['text_cfg']['vocab_size']}, but "
                              f"only CLIP's BPE vocabulary ({ClipBpeTokenizer.vocab_size}) has a tokenizer here")
    merges_file = find_merges_file(bpe_path)
    target = epath.Path(out)
    if target.exists() and any(target.iterdir()):
        if not overwrite:
            raise ConversionError(f"--out={out} exists and is not empty (pass --overwrite to replace it)")
        if not (target / PRETRAINED_MARKER).exists():
            raise ConversionError(f"--out={out} is not a converted CLIP (no {PRETRAINED_MARKER}): not replacing it")
    params = convert(read_checkpoint(checkpoint), arch, arch_name)
    if scan_layers:
        params = scanned(params, arch)
    if target.exists():
        target.rmtree()
    activation = "quick_gelu" if arch.get("quick_gelu") else "gelu"
    write_pretrained(out, params, pretrained_config(arch, dtype, scan_layers), merges_file,
                     {"checkpoint": os.path.abspath(checkpoint), "arch_name": arch_name, "arch": arch,
                      "activation": activation})
    count = sum(v.size for v in traverse_util.flatten_dict(params).values())
    return (f"wrote {out}: {arch_name} ({activation}), {count:,} parameters; "
            f"train a prior on it with --config.clip.pretrained={out}")


def main(argv: list[str]) -> None:
    from absl import flags, logging

    logging.set_verbosity(logging.WARNING)  # Orbax logs every step of a save at INFO
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    if not f.checkpoint or not f.arch or not f.out:
        sys.exit("error: --checkpoint, --arch and --out are required")
    try:
        print(convert_checkpoint(f.checkpoint, f.arch, f.out, f.bpe_path, f.overwrite, f.dtype, f.scan_layers))
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


def run() -> None:
    """The command line (flags are defined here, not at import, so importing this module defines none)."""
    from absl import app, flags

    flags.DEFINE_string("checkpoint", None, "OpenAI / OpenCLIP checkpoint (.safetensors, or a torch file).")
    flags.DEFINE_string("arch", None, "Architecture name (e.g. ViT-L-14, ViT-L-14-quickgelu for OpenAI's "
                        "weights) or an OpenCLIP model-config .json file.")
    flags.DEFINE_string("out", None, "Output directory (the value of clip.pretrained).")
    flags.DEFINE_string("bpe_path", "", "CLIP's bpe_simple_vocab_16e6.txt.gz ('' = from open_clip_torch).")
    flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out.")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                      "Compute dtype of the frozen CLIP (parameters stay float32): bfloat16 on TPU/GPU.")
    flags.DEFINE_bool("scan_layers", False, "Stack each tower's blocks for a scanned transformer (model.scan_layers).")
    app.run(main)


if __name__ == "__main__":
    run()
