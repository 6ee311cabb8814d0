"""Generate images with a finished main-job run: text to image, variations, interpolations, text diffs.

    python -m dalle2_jax.sample --workdir=runs/shapes_unclip --out=out \\
        --prompt="a large red circle in the center on a white background" --num_per_prompt=4 --seed=0
    python -m dalle2_jax.sample --workdir=RUN --out=DIR --prompts_file=prompts.txt   # one per line
    python -m dalle2_jax.sample --workdir=RUN --out=DIR --mode=variations --image=a.png --num=8
    python -m dalle2_jax.sample --workdir=RUN --out=DIR --mode=interpolate --image=a.png --image=b.png --num=8
    python -m dalle2_jax.sample --workdir=RUN --out=DIR --mode=text_diff --image=a.png \\
        --caption="a red circle" --target="a blue circle" --thetas=0,0.25,0.5

Writes DIR/NNNN.png, DIR/grid.png and DIR/manifest.jsonl (one JSON object per image: its PNG,
prompt or sources, seed and mode parameters). `--set=decoder.num_steps=25` (repeatable) changes a
stage's sampling field: sampler, num_steps, eta, guidance_scale (and the prior's num_candidates).
Image k of a text run uses seed `--seed + k`; with the default deterministic samplers it is
reproduced by its prompt and seed alone. An existing DIR with a manifest is never overwritten
unless `--overwrite` is given.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from etils import epath  # noqa: E402

MODES = ("text", "variations", "interpolate", "text_diff")

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of a finished main-job run.")
_OUT = flags.DEFINE_string("out", None, "Output directory for the PNGs, grid.png and manifest.jsonl.")
_MODE = flags.DEFINE_enum("mode", "text", MODES, "What to generate.")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A caption (text mode; repeatable).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "A file with one caption per line (text mode).")
_NUM_PER_PROMPT = flags.DEFINE_integer("num_per_prompt", 1, "Images per caption (text mode).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the first image; image k uses seed + k.")
_IMAGE = flags.DEFINE_multi_string("image", [], "Source image file(s): one for variations and text_diff, two "
                                   "for interpolate.")
_NUM = flags.DEFINE_integer("num", 8, "Variations, or interpolation points (endpoints included).")
_ETA = flags.DEFINE_float("eta", None, "Variations and text diffs: DDIM noise of the decoder (> 0 gives variety; "
                          "default: the run's decoder.variation_eta or decoder.text_diff_eta).")
_MANIPULATION_GUIDANCE = flags.DEFINE_float("manipulation_guidance", None, "Variations, interpolations and text "
                                            "diffs: the decoder's guidance scale (default: the run's "
                                            "decoder.manipulation_guidance_scale).")
_FROM_INVERTED = flags.DEFINE_bool("from_inverted", True, "Variations: start from the image's DDIM-inverted "
                                   "latent, as in the paper (false: from fresh noise).")
_LATENT = flags.DEFINE_enum("latent", "inverted", ("inverted", "fixed"),
                            "Interpolation: slerp the inverted latents, or one fixed random latent.")
_CAPTION = flags.DEFINE_string("caption", None, "Text diff: a caption of the source image.")
_TARGET = flags.DEFINE_string("target", None, "Text diff: the caption to move towards.")
_WITH_CAPTIONS = flags.DEFINE_bool("with_captions", False, "Text diff: also give the decoder the captions (inverted "
                                   "under --caption, decoded under --target); the paper's moves the embedding only.")
_THETAS = flags.DEFINE_list("thetas", ["0", "0.1", "0.2", "0.3", "0.4", "0.5"], "Text diff: slerp angles "
                            "(fractions of the way to the text diff).")
_SET = flags.DEFINE_multi_string("set", [], "STAGE.FIELD=VALUE: a sampling override, e.g. decoder.num_steps=25.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "Images per compiled batch (0 = 2 per device).")
_NUM_CPU_DEVICES = flags.DEFINE_integer("num_cpu_devices", 0, "CPU only: devices to split the host into "
                                        "(0 = one per core).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace the samples in an existing --out.")


class InputError(ValueError):
    """Bad command-line input; the message names the flag."""


def parse_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    """['decoder.num_steps=25', ...] -> {'decoder': {'num_steps': '25'}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        stage, dot, field = key.partition(".")
        if not sep or not dot or not stage or not field:
            raise InputError(f"--set={item!r}: expected STAGE.FIELD=VALUE, e.g. decoder.num_steps=25")
        out.setdefault(stage, {})[field] = value
    return out


def read_prompts(prompts: list[str], prompts_file: str | None) -> list[str]:
    """The prompts from --prompt and --prompts_file (blank lines skipped)."""
    prompts = list(prompts)
    if prompts_file:
        path = epath.Path(prompts_file)
        if not path.exists():
            raise InputError(f"--prompts_file={prompts_file!r}: no such file")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise InputError("text mode needs --prompt or --prompts_file")
    for prompt in prompts:
        if not prompt.strip():
            raise InputError("--prompt: a prompt is empty")
    return prompts


def read_image(path: str) -> np.ndarray:
    """A square RGB image file as uint8 [R, R, 3]."""
    from PIL import Image

    if not epath.Path(path).exists():
        raise InputError(f"--image={path!r}: no such file")
    try:
        picture = np.asarray(Image.open(path).convert("RGB"), np.uint8)
    except OSError as e:
        raise InputError(f"--image={path!r}: not a readable image ({e})") from None
    if picture.shape[0] != picture.shape[1]:
        raise InputError(f"--image={path!r}: the image is {picture.shape[1]}x{picture.shape[0]}; it must be square")
    return picture


def check_flags() -> None:
    """Flag checks that need no model (they run before anything loads or compiles)."""
    if not _WORKDIR.value or not _OUT.value:
        raise InputError("--workdir and --out are required")
    if _NUM_PER_PROMPT.value < 1 or _NUM.value < 1:
        raise InputError("--num_per_prompt and --num must be >= 1")
    wanted_images = {"text": 0, "variations": 1, "interpolate": 2, "text_diff": 1}[_MODE.value]
    if len(_IMAGE.value) != wanted_images:
        raise InputError(f"--mode={_MODE.value} takes {wanted_images} --image, got {len(_IMAGE.value)}")
    if _MODE.value == "text_diff" and not (_CAPTION.value and _TARGET.value):
        raise InputError("--mode=text_diff needs --caption (of the image) and --target")
    if _MODE.value == "interpolate" and _NUM.value < 2:
        raise InputError("--mode=interpolate needs --num >= 2 (the two endpoints)")
    for flag in (_ETA, _MANIPULATION_GUIDANCE):
        if flag.value is not None and flag.value < 0:
            raise InputError(f"--{flag.name}={flag.value}: must be >= 0")
    out = epath.Path(_OUT.value)
    if (out / "manifest.jsonl").exists() and not _OVERWRITE.value:
        raise InputError(f"--out={_OUT.value!r} already holds samples (manifest.jsonl); choose another directory "
                         "or pass --overwrite")


def generate(pipeline) -> tuple[np.ndarray, list[dict]]:
    """Runs the chosen mode; returns the images and one manifest record per image."""
    mode, seed = _MODE.value, _SEED.value
    if mode == "text":
        prompts = [p for p in read_prompts(_PROMPT.value, _PROMPTS_FILE.value) for _ in range(_NUM_PER_PROMPT.value)]
        seeds = [seed + k for k in range(len(prompts))]
        return pipeline.text_to_image(prompts, seeds), [{"prompt": p, "seed": s} for p, s in zip(prompts, seeds)]
    sources = [pipeline.input_image(read_image(path)) for path in _IMAGE.value]
    if mode == "variations":
        seeds = [seed + k for k in range(_NUM.value)]
        eta = pipeline.variation_eta if _ETA.value is None else _ETA.value
        pictures = pipeline.variations(sources[0], seeds, eta=eta, from_inverted=_FROM_INVERTED.value)
        return pictures, [{"mode": mode, "source": _IMAGE.value[0], "seed": s, "eta": eta,
                           "from_inverted": _FROM_INVERTED.value} for s in seeds]
    if mode == "interpolate":
        thetas = np.linspace(0.0, 1.0, _NUM.value).tolist()
        pictures = pipeline.interpolate(sources[0], sources[1], thetas, seed, latent=_LATENT.value)
        return pictures, [{"mode": mode, "sources": list(_IMAGE.value), "theta": t, "latent": _LATENT.value,
                           "seed": seed} for t in thetas]
    try:
        thetas = [float(t) for t in _THETAS.value]
    except ValueError:
        raise InputError(f"--thetas={','.join(_THETAS.value)}: expected numbers") from None
    eta = pipeline.text_diff_eta if _ETA.value is None else _ETA.value
    pictures = pipeline.text_diff(sources[0], _CAPTION.value, _TARGET.value, thetas, seed,
                                  with_captions=_WITH_CAPTIONS.value, eta=eta)
    return pictures, [{"mode": mode, "source": _IMAGE.value[0], "caption": _CAPTION.value, "target": _TARGET.value,
                       "theta": t, "seed": seed, "with_captions": _WITH_CAPTIONS.value, "eta": eta} for t in thetas]


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        check_flags()
        overrides = parse_overrides(_SET.value)
    except InputError as e:
        sys.exit(f"error: {e}")
    from dalle2_jax.parallel.host_cpu import configure_cpu_backend

    configure_cpu_backend(_NUM_CPU_DEVICES.value)
    from dalle2_jax import images
    from dalle2_jax.parallel.mesh import ConfigError
    from dalle2_jax.pipeline import Pipeline

    try:
        pipeline = Pipeline(_WORKDIR.value, sampling=overrides, batch_size=_BATCH_SIZE.value,
                            manipulation_guidance_scale=_MANIPULATION_GUIDANCE.value)
        pictures, records = generate(pipeline)
    except (InputError, ConfigError, ValueError) as e:
        sys.exit(f"error: {e}")
    images.write_sample_dir(_OUT.value, pictures, records)
    logging.info("Wrote %d images, grid.png and manifest.jsonl to %s.", len(pictures), _OUT.value)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
