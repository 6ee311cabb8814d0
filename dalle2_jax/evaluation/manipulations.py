"""Measures the image manipulations of unCLIP sec. 3 on shapes with the attribute evaluator.

    python -m dalle2_jax.evaluation.manipulations --workdir=runs/shapes_unclip [--num_sources=24]

On validation images (seen color/shape pairs) of a finished main-job run:
  - variations (sec. 3.1): decoded from the image's DDIM-inverted latent with DDIM eta > 0, as in
    the paper (`--from_inverted=false`: from fresh noise); the fraction of variations whose five
    attributes equal the source's, and how far they are from the source and from one another
    (mean absolute pixel difference, 0-255, at CLIP's resolution): a variation that copied its
    source would keep every attribute and differ by ~0. For scale, the same difference between
    renders of the source's own five attributes at fresh jitter (`shapes.renders_of`): on shapes
    the attributes fix everything else, so a faithful variation can differ only that much;
  - text diffs (sec. 3.3): each source's color changed by its caption ("red" -> the next color)
    at several theta; per theta the fraction that took the target color and, of those, the
    fraction that kept the other four attributes. Measured twice: as in the paper (the
    embedding moves, no caption) and with the captions given to the decoder
    (`Pipeline.text_diff(with_captions=True)`);
  - interpolations (sec. 3.2): pairs of sources interpolated with slerped inverted latents; the
    fraction of endpoints (theta = 0 and 1) whose attributes equal their source's.
Prints one JSON object and writes it, with grids of every manipulation, to
WORKDIR/manipulations/ (report.json, variations.png, text_diffs.png, interpolations.png).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402


def _define_flags() -> None:
    """Only when run as a program: `measure` is imported by tests next to modules with the same flags."""
    flags.DEFINE_string("workdir", None, "A finished main-job run.")
    flags.DEFINE_integer("num_sources", 24, "Validation images manipulated.")
    flags.DEFINE_integer("num_variations", 4, "Variations per source.")
    flags.DEFINE_list("thetas", ["0.25", "0.5", "0.75"], "Text-diff slerp angles.")
    flags.DEFINE_float("eta", None, "DDIM noise of the variations (default: the run's decoder.variation_eta).")
    flags.DEFINE_float("text_diff_eta", None, "DDIM noise of the text diffs (default: the run's "
                       "decoder.text_diff_eta).")
    flags.DEFINE_float("manipulation_guidance", None, "The decoder's guidance scale (default: the run's "
                       "decoder.manipulation_guidance_scale).")
    flags.DEFINE_bool("from_inverted", True, "Variations from the source's DDIM-inverted latent (the paper's).")


def _matches(predicted: dict[str, str], target: dict[str, str], skip: str = "") -> bool:
    return all(predicted[k] == target[k] for k in target if k != skip)


def _mean_pairwise_diff(pictures: np.ndarray) -> float:
    """Mean absolute pixel difference over the ordered pairs of distinct pictures [N, R, R, 3]."""
    count = len(pictures)
    pictures = pictures.astype(np.float32)
    return float(np.abs(pictures[:, None] - pictures[None]).mean(axis=(2, 3, 4)).sum() / (count * (count - 1)))


def measure(pipeline, sources: np.ndarray, attributes: list[dict[str, str]], num_variations: int,
            thetas: list[float], eta: float | None = None, from_inverted: bool = True,
            text_diff_eta: float | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The three measurements above; returns (metrics, grids). The DDIM noise of the variations
    (`eta`) and text diffs defaults to the run's (`Pipeline.variation_eta`, `.text_diff_eta`)."""
    from dalle2_jax import images
    from dalle2_jax.data import shapes
    from dalle2_jax.evaluation.shapes_attributes import predict

    def attrs(pictures: np.ndarray) -> list[dict[str, str]]:
        predictions = predict(pictures)
        return [predictions.attributes(k) for k in range(len(pictures))]

    def at_source_size(pictures: np.ndarray) -> np.ndarray:
        return pipeline.input_images(pictures).astype(np.float32)

    eta = pipeline.variation_eta if eta is None else eta
    text_diff_eta = pipeline.text_diff_eta if text_diff_eta is None else text_diff_eta
    metrics: dict[str, float] = {"variations/eta": eta, "text_diff/eta": text_diff_eta,
                                 "guidance_scale": pipeline.manipulation_guidance_scale}
    grids: dict[str, list[np.ndarray]] = {"variations": [], "text_diffs": [], "interpolations": []}
    kept, total, to_source, between, dataset_between = 0, 0, [], [], []
    modes = {"text_diff": False, "text_diff_with_captions": True}
    diff_hits = {(m, t): [0, 0] for m in modes for t in thetas}  # -> [took target color, and kept the other four]
    for k, (source, target) in enumerate(zip(sources, attributes)):
        picture = pipeline.input_image(source)
        variations = pipeline.variations(picture, [k * 100 + j for j in range(num_variations)], eta=eta,
                                         from_inverted=from_inverted)
        found = attrs(variations)
        kept += sum(_matches(f, target) for f in found)
        total += len(found)
        small = at_source_size(variations)
        to_source.append(np.mean(np.abs(small - picture.astype(np.float32))))
        if num_variations > 1:
            between.append(_mean_pairwise_diff(small))
            renders = shapes.renders_of(target, num_variations, len(picture), np.random.default_rng(k))
            dataset_between.append(_mean_pairwise_diff(renders))
        grids["variations"] += [source, *variations]

        colors = shapes.COLORS
        new_color = colors[(colors.index(target["color"]) + 1) % len(colors)]
        caption = shapes.caption(**target)
        for mode, with_captions in modes.items():
            diffs = pipeline.text_diff(picture, caption, caption.replace(target["color"], new_color, 1), thetas,
                                       seed=k, with_captions=with_captions, eta=text_diff_eta)
            for theta, f in zip(thetas, attrs(diffs)):
                if f["color"] == new_color:
                    diff_hits[mode, theta][0] += 1
                    diff_hits[mode, theta][1] += _matches(f, target, skip="color")
            grids["text_diffs"] += [source, *diffs]
    metrics["variations/all_attributes_kept"] = kept / total
    metrics["variations/mean_abs_diff_to_source"] = float(np.mean(to_source))
    if between:
        metrics["variations/mean_abs_diff_between"] = float(np.mean(between))
        metrics["variations/dataset_mean_abs_diff_between_same_attributes"] = float(np.mean(dataset_between))
    for (mode, theta), (took, kept_others) in diff_hits.items():
        metrics[f"{mode}/theta_{theta:g}/took_target_color"] = took / len(sources)
        metrics[f"{mode}/theta_{theta:g}/kept_others_given_color"] = kept_others / took if took else float("nan")

    endpoint_hits, endpoints = 0, 0
    for a in range(0, len(sources) - 1, 2):
        path = pipeline.interpolate(pipeline.input_image(sources[a]), pipeline.input_image(sources[a + 1]),
                                    np.linspace(0, 1, 5).tolist(), seed=a)
        found = attrs(path[[0, -1]])
        endpoint_hits += _matches(found[0], attributes[a]) + _matches(found[1], attributes[a + 1])
        endpoints += 2
        grids["interpolations"] += [sources[a], *path, sources[a + 1]]
    metrics["interpolation/endpoints_reproduce_source_attributes"] = endpoint_hits / endpoints
    columns = {"variations": 1 + num_variations, "text_diffs": 2 * (1 + len(thetas)), "interpolations": 7}
    return metrics, {name: images.grid(cells, columns=columns[name]) for name, cells in grids.items()}


def main(argv: list[str]) -> None:
    del argv
    args = flags.FLAGS
    if not args.workdir:
        sys.exit("error: --workdir is required")
    from dalle2_jax.parallel.host_cpu import configure_cpu_backend

    configure_cpu_backend()
    from etils import epath

    from dalle2_jax import images
    from dalle2_jax.data import pipeline as data_pipeline
    from dalle2_jax.data import shapes
    from dalle2_jax.parallel.mesh import ConfigError
    from dalle2_jax.pipeline import Pipeline

    try:
        pipeline = Pipeline(args.workdir, manipulation_guidance_scale=args.manipulation_guidance)
    except (ConfigError, ValueError) as e:
        sys.exit(f"error: {e}")
    source = data_pipeline.open_splits(pipeline.clip.config.data, ["validation"])["validation"]
    data = data_pipeline.load_all(source, pipeline.clip.example, args.num_sources)
    combos = shapes.all_combinations()
    attributes = [combos[c] for c in data["combination"]]
    metrics, grids = measure(pipeline, data["image"], attributes, args.num_variations,
                             [float(t) for t in args.thetas], args.eta, args.from_inverted, args.text_diff_eta)
    out = epath.Path(args.workdir) / "manipulations"
    out.mkdir(parents=True, exist_ok=True)
    for name, picture in grids.items():
        images.write_png(out / f"{name}.png", picture)
    (out / "report.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    print(json.dumps(metrics, indent=2, sort_keys=True))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
