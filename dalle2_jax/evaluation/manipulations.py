"""Measures the image manipulations of unCLIP sec. 3 on shapes with the attribute evaluator.

    python -m dalle2_jax.evaluation.manipulations --workdir=runs/shapes_unclip [--num_sources=24]

On validation images (seen color/shape pairs) of a finished main-job run:
  - variations (sec. 3.1): the fraction of variations whose five attributes equal the source's;
  - text diffs (sec. 3.3): each source's color changed by its caption ("red" -> the next color)
    at several theta; per theta the fraction that took the target color and, of those, the
    fraction that kept the other four attributes;
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
    flags.DEFINE_float("eta", 1.0, "DDIM noise of the variations.")


def _matches(predicted: dict[str, str], target: dict[str, str], skip: str = "") -> bool:
    return all(predicted[k] == target[k] for k in target if k != skip)


def measure(pipeline, sources: np.ndarray, attributes: list[dict[str, str]], num_variations: int,
            thetas: list[float], eta: float) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The three measurements above; returns (metrics, grids)."""
    from dalle2_jax import images
    from dalle2_jax.data import shapes
    from dalle2_jax.evaluation.shapes_attributes import predict

    def attrs(pictures: np.ndarray) -> list[dict[str, str]]:
        predictions = predict(pictures)
        return [predictions.attributes(k) for k in range(len(pictures))]

    metrics: dict[str, float] = {}
    grids: dict[str, list[np.ndarray]] = {"variations": [], "text_diffs": [], "interpolations": []}
    kept, total = 0, 0
    diff_hits = {t: [0, 0] for t in thetas}  # theta -> [took target color, and kept the other four]
    for k, (source, target) in enumerate(zip(sources, attributes)):
        picture = pipeline.input_image(source)
        variations = pipeline.variations(picture, [k * 100 + j for j in range(num_variations)], eta=eta)
        found = attrs(variations)
        kept += sum(_matches(f, target) for f in found)
        total += len(found)
        grids["variations"] += [source, *variations]

        colors = shapes.COLORS
        new_color = colors[(colors.index(target["color"]) + 1) % len(colors)]
        caption = shapes.caption(**target)
        diffs = pipeline.text_diff(picture, caption, caption.replace(target["color"], new_color, 1), thetas, seed=k)
        for theta, f in zip(thetas, attrs(diffs)):
            if f["color"] == new_color:
                diff_hits[theta][0] += 1
                diff_hits[theta][1] += _matches(f, target, skip="color")
        grids["text_diffs"] += [source, *diffs]
    metrics["variations/all_attributes_kept"] = kept / total
    for theta, (took, kept_others) in diff_hits.items():
        metrics[f"text_diff/theta_{theta:g}/took_target_color"] = took / len(sources)
        metrics[f"text_diff/theta_{theta:g}/kept_others_given_color"] = kept_others / took if took else float("nan")

    endpoint_hits, endpoints = 0, 0
    for a in range(0, len(sources) - 1, 2):
        path = pipeline.interpolate(pipeline.input_image(sources[a]), pipeline.input_image(sources[a + 1]),
                                    np.linspace(0, 1, 5).tolist(), seed=a)
        found = attrs(path[[0, -1]])
        endpoint_hits += _matches(found[0], attributes[a]) + _matches(found[1], attributes[a + 1])
        endpoints += 2
        grids["interpolations"] += [sources[a], *path, sources[a + 1]]
    metrics["interpolation/endpoints_reproduce_source_attributes"] = endpoint_hits / endpoints
    columns = {"variations": 1 + num_variations, "text_diffs": 1 + len(thetas), "interpolations": 7}
    return metrics, {name: images.grid(cells, columns=columns[name]) for name, cells in grids.items()}


def main(argv: list[str]) -> None:
    del argv
    args = flags.FLAGS
    if not args.workdir:
        sys.exit("error: --workdir is required")
    import jax

    jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)
    from etils import epath

    from dalle2_jax import images
    from dalle2_jax.data import pipeline as data_pipeline
    from dalle2_jax.data import shapes
    from dalle2_jax.parallel.mesh import ConfigError
    from dalle2_jax.pipeline import Pipeline

    try:
        pipeline = Pipeline(args.workdir)
    except (ConfigError, ValueError) as e:
        sys.exit(f"error: {e}")
    source = data_pipeline.open_splits(pipeline.clip.config.data, ["validation"])["validation"]
    data = data_pipeline.load_all(source, pipeline.clip.example, args.num_sources)
    combos = shapes.all_combinations()
    attributes = [combos[c] for c in data["combination"]]
    metrics, grids = measure(pipeline, data["image"], attributes, args.num_variations,
                             [float(t) for t in args.thetas], args.eta)
    out = epath.Path(args.workdir) / "manipulations"
    out.mkdir(parents=True, exist_ok=True)
    for name, picture in grids.items():
        images.write_png(out / f"{name}.png", picture)
    (out / "report.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    print(json.dumps(metrics, indent=2, sort_keys=True))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
