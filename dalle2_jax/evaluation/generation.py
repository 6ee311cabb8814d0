"""Text-to-image evaluation on shapes: the main job's final check of the whole stack.

Draws a fixed set of prompts, seen combinations (their color/shape pair appears in training) and
held-out ones (`data.shapes` keeps some color/shape pairs out of training), generates them with
the finished pipeline and scores each image's attributes with the project's evaluator
(`evaluation/shapes_attributes.py`) against its prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from etils import epath

from dalle2_jax import images
from dalle2_jax.data import shapes
from dalle2_jax.evaluation import shapes_attributes
from dalle2_jax.parallel import distributed

PROMPTS_SEED = 0  # the prompt set is part of the metric: changing it changes every reported number


def samples_config() -> ml_collections.ConfigDict:
    """The `samples` section of a multi-stage config: what is generated once every stage is done."""
    s = ml_collections.ConfigDict()
    s.num_seen = 48  # prompts whose color/shape pair is in the training data
    s.num_heldout = 24  # prompts with a held-out color/shape pair
    s.seed = 0  # seed of the first image (image k: seed + k)
    s.batch_size = 0  # images per compiled batch (0 = 2 per device)
    return s


def shapes_prompts(num_seen: int, num_heldout: int) -> list[tuple[str, dict[str, str], str]]:
    """(caption, attributes, 'seen' or 'heldout'): a fixed, balanced set of prompts per group.

    In each group every attribute (the group's color/shape pairs, background, size, position)
    runs through all its values in rounds, each round in its own fixed shuffled order drawn
    independently per attribute: every value appears equally often (within one) and no attribute
    is tied to another, so e.g. each shape is drawn at every size and position.
    """
    out = []
    for index, (group, count) in enumerate((("seen", num_seen), ("heldout", num_heldout))):
        rng = np.random.default_rng([PROMPTS_SEED, index])  # one stream per group: num_seen leaves heldout alone
        pairs = shapes.split_pairs("validation" if group == "seen" else "heldout")
        columns = {name: _balanced_column(values, count, rng)
                   for name, values in (("pair", pairs), ("background", shapes.BACKGROUNDS),
                                        ("size", shapes.SIZES), ("position", shapes.POSITIONS))}
        for k in range(count):
            color, shape = columns["pair"][k]
            attrs = {"background": columns["background"][k], "color": color, "shape": shape,
                     "size": columns["size"][k], "position": columns["position"][k]}
            out.append((shapes.caption(**attrs), attrs, group))
    return out


def _balanced_column(values: Sequence[Any], count: int, rng: np.random.Generator) -> list[Any]:
    """`count` values: rounds through all of `values`, each round in a fresh shuffled order."""
    rounds = -(-count // len(values))
    order = np.concatenate([rng.permutation(len(values)) for _ in range(rounds)])[:count]
    return [values[i] for i in order]


def evaluate_text_to_image(workdir: str, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Generates the fixed prompts into WORKDIR/samples (PNGs, grid.png, manifest.jsonl) and
    returns the attribute accuracies per group ('seen/all', 'heldout/color', ...)."""
    from dalle2_jax.pipeline import Pipeline  # the pipeline pulls in every stage

    prompts = shapes_prompts(cfg.num_seen, cfg.num_heldout)
    pipeline = Pipeline(workdir, batch_size=cfg.batch_size)
    seeds = [cfg.seed + k for k in range(len(prompts))]
    logging.info("Generating %d images for the final text-to-image evaluation.", len(prompts))
    pictures = pipeline.text_to_image([p for p, _, _ in prompts], seeds)
    records = [{"prompt": p, "seed": s, "group": g} for (p, _, g), s in zip(prompts, seeds)]
    if distributed.is_chief():
        images.write_sample_dir(epath.Path(workdir) / "samples", pictures, records, columns=12)
    result: dict[str, Any] = {"image_size": int(pictures.shape[1])}
    for group in ("seen", "heldout"):
        chosen = [k for k, (_, _, g) in enumerate(prompts) if g == group]
        if chosen:
            scores = shapes_attributes.score(pictures[chosen], [prompts[k][1] for k in chosen])
            result.update({f"{group}/{name}": value for name, value in scores.items()})
            result[f"{group}/count"] = len(chosen)
    return result
