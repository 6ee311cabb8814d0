"""`shapes`: the project's built-in procedural text-to-image dataset.

Every example is one flat-coloured shape on a flat background, fully described by five attributes
(see the dataset issue for the spec this module implements exactly):

| attribute  | values, in canonical order                                       |
|------------|------------------------------------------------------------------|
| background | white, gray, black                                               |
| color      | red, green, blue, yellow, purple, orange                         |
| shape      | circle, square, triangle (apex up), diamond (square turned 45°)  |
| size       | small (bounding-box side 0.30), large (side 0.50)                |
| position   | center, left, right, top, bottom                                 |

Coordinates are fractions of the side R of the square canvas, y pointing down; pixel (i, j) has
its center at ((j + 0.5) / R, (i + 0.5) / R). A shape's center is its position's anchor plus a
uniform jitter in [-0.04, 0.04) per axis, clipped to [h, 1 - h] (h = side / 2) so the bounding
box stays on the canvas, then rounded to float32 (the stored value; see `clip_center`). With
d = p - c a pixel is inside when: circle |d| <= h; square |dx| <= h and |dy| <= h; diamond
|dx| + |dy| <= h; triangle -h <= dy <= h and |dx| <= (dy + h) / 2. No anti-aliasing.

The caption is `a {size} {color} {shape} {position phrase} on a {background} background`, one of
3 * 6 * 4 * 2 * 5 = 720. Some (color, shape) pairs (`DEFAULT_HELDOUT_PAIRS` by default) never
appear in `train` or `validation`, only in the `heldout` split, to measure compositional
generalisation. Within a split the attributes are uniform over the allowed combinations.

Example `k` of split `s` is drawn from `np.random.default_rng([seed, SPLITS.index(s), k])`, so
the data does not depend on generation order: same config, same bytes. Examples are stored in
key order (`data_source[k]` is example `k`).

Building and reading need no TensorFlow: images are PNG-encoded here with Pillow (TFDS would
encode numpy images with TensorFlow), files are array_record, and reads go through
`tfds.data_source` / `builder.as_data_source`::

    builder = shapes_builder(data_dir, resolution=32, train_size=50_000,
                             validation_size=2_000, heldout_size=2_000)
    builder.download_and_prepare()
    train = builder.as_data_source(split="train")
"""

import dataclasses
import hashlib
import io
import itertools
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

RGB = tuple[int, int, int]
Pair = tuple[str, str]

ATTRIBUTE_NAMES = ("background", "color", "shape", "size", "position")
BACKGROUNDS = ("white", "gray", "black")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")
POSITIONS = ("center", "left", "right", "top", "bottom")

# Read-only lookups keyed by value name.
ATTRIBUTE_VALUES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    dict(zip(ATTRIBUTE_NAMES, (BACKGROUNDS, COLORS, SHAPES, SIZES, POSITIONS), strict=True))
)
BACKGROUND_RGB: Mapping[str, RGB] = MappingProxyType(
    {"white": (240, 240, 240), "gray": (128, 128, 128), "black": (16, 16, 16)}
)
COLOR_RGB: Mapping[str, RGB] = MappingProxyType(
    {
        "red": (220, 30, 30),
        "green": (30, 170, 50),
        "blue": (40, 70, 220),
        "yellow": (235, 210, 30),
        "purple": (140, 50, 190),
        "orange": (240, 130, 20),
    }
)
SIZE_SIDE: Mapping[str, float] = MappingProxyType({"small": 0.30, "large": 0.50})
POSITION_ANCHOR: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "center": (0.5, 0.5),
        "left": (0.25, 0.5),
        "right": (0.75, 0.5),
        "top": (0.5, 0.25),
        "bottom": (0.5, 0.75),
    }
)
POSITION_PHRASE: Mapping[str, str] = MappingProxyType(
    {
        "center": "in the center",
        "left": "on the left",
        "right": "on the right",
        "top": "at the top",
        "bottom": "at the bottom",
    }
)
JITTER = 0.04  # half-width of the uniform jitter added to the anchor, per axis

DEFAULT_HELDOUT_PAIRS: tuple[Pair, ...] = (
    ("green", "triangle"),
    ("blue", "diamond"),
    ("purple", "circle"),
    ("orange", "square"),
)
SPLITS = ("train", "validation", "heldout")  # a split's index here seeds its examples
RESOLUTIONS = (8, 16, 32, 64, 128, 256)


def caption(background: str, color: str, shape: str, size: str, position: str) -> str:
    """The caption of one attribute combination (takes value names)."""
    return f"a {size} {color} {shape} {POSITION_PHRASE[position]} on a {background} background"


def all_combinations() -> list[dict[str, str]]:
    """The 720 attribute dicts, nested loops in `ATTRIBUTE_NAMES` order (position fastest)."""
    values = (ATTRIBUTE_VALUES[name] for name in ATTRIBUTE_NAMES)
    return [dict(zip(ATTRIBUTE_NAMES, combo, strict=True)) for combo in itertools.product(*values)]


def all_captions() -> list[str]:
    """Captions of `all_combinations()`, in the same order."""
    return [caption(**attrs) for attrs in all_combinations()]


def combination_index(attrs: Mapping[str, str]) -> int:
    """Index of `attrs` in `all_combinations()`; ValueError for an unknown value."""
    index = 0
    for name in ATTRIBUTE_NAMES:
        values = ATTRIBUTE_VALUES[name]
        if attrs[name] not in values:
            raise ValueError(f"unknown {name} {attrs[name]!r}; expected one of {values}")
        index = index * len(values) + values.index(attrs[name])
    return index


def shape_mask(
    shape: str, size: str, center: tuple[float, float], resolution: int
) -> np.ndarray:
    """Boolean [R, R] mask of the pixels whose centers are inside the shape."""
    coords = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution
    dx = coords[None, :] - center[0]
    dy = coords[:, None] - center[1]
    h = SIZE_SIDE[size] / 2
    if shape == "circle":
        return np.hypot(dx, dy) <= h
    if shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= h
    if shape == "triangle":
        return (dy >= -h) & (dy <= h) & (np.abs(dx) <= (dy + h) / 2)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(attrs: Mapping[str, str], center: tuple[float, float], resolution: int) -> np.ndarray:
    """Render one example as a uint8 [R, R, 3] image; `center` is (x, y) in canvas fractions."""
    image = np.empty((resolution, resolution, 3), dtype=np.uint8)
    image[...] = BACKGROUND_RGB[attrs["background"]]
    image[shape_mask(attrs["shape"], attrs["size"], center, resolution)] = COLOR_RGB[attrs["color"]]
    return image


def clip_center(point: tuple[float, float], size: str) -> tuple[float, float]:
    """Clip a raw center to [h, 1 - h] per axis, then round it to float32, staying in range.

    The float32 rounding makes the stored `center` feature exactly the center that was rendered.
    """
    low = np.float64(SIZE_SIDE[size] / 2)  # float64 scalars: compare in float64, not float32
    high = 1 - low
    clipped = np.clip(np.asarray(point, dtype=np.float64), low, high).astype(np.float32)
    clipped = np.where(clipped < low, np.nextafter(clipped, np.float32(1)), clipped)
    clipped = np.where(clipped > high, np.nextafter(clipped, np.float32(0)), clipped)
    return float(clipped[0]), float(clipped[1])


def validate_heldout_pairs(pairs: Sequence[Sequence[str]]) -> tuple[Pair, ...]:
    """Check held-out (color, shape) pairs and return them deduplicated in canonical order."""
    checked = set()
    for pair in pairs:
        if len(pair) != 2 or pair[0] not in COLORS or pair[1] not in SHAPES:
            raise ValueError(f"heldout_pairs: {pair!r} is not a (color, shape) pair")
        checked.add((pair[0], pair[1]))
    if not checked or len(checked) == len(COLORS) * len(SHAPES):
        raise ValueError("heldout_pairs must hold out at least one and not every (color, shape)")
    return tuple(pair for pair in itertools.product(COLORS, SHAPES) if pair in checked)


def split_pairs(split: str, heldout_pairs: Sequence[Pair] = DEFAULT_HELDOUT_PAIRS) -> tuple[Pair, ...]:
    """The (color, shape) pairs allowed in `split`, in canonical order."""
    heldout = validate_heldout_pairs(heldout_pairs)
    if split == "heldout":
        return heldout
    if split in ("train", "validation"):
        return tuple(pair for pair in itertools.product(COLORS, SHAPES) if pair not in heldout)
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def sample_attributes_and_center(
    rng: np.random.Generator, pairs: Sequence[Pair]
) -> tuple[dict[str, str], tuple[float, float]]:
    """Draw attributes uniformly over `pairs` x the other attributes, and the clipped center."""
    color, shape = pairs[rng.integers(len(pairs))]
    attrs = {
        "background": BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
        "color": color,
        "shape": shape,
        "size": SIZES[rng.integers(len(SIZES))],
        "position": POSITIONS[rng.integers(len(POSITIONS))],
    }
    return attrs, sample_center(rng, attrs)


def sample_center(rng: np.random.Generator, attrs: Mapping[str, str]) -> tuple[float, float]:
    """The clipped center of a shape with these attributes: its position's anchor plus jitter."""
    jitter = rng.uniform(-JITTER, JITTER, size=2)
    anchor = POSITION_ANCHOR[attrs["position"]]
    return clip_center((anchor[0] + jitter[0], anchor[1] + jitter[1]), attrs["size"])


def renders_of(attrs: Mapping[str, str], count: int, resolution: int, rng: np.random.Generator) -> np.ndarray:
    """`count` renders [count, R, R, 3] of one attribute combination at fresh jitter: all the
    variation the dataset itself has once the five attributes are fixed."""
    return np.stack([render(attrs, sample_center(rng, attrs), resolution) for _ in range(count)])


def generate_example(
    seed: int,
    split: str,
    index: int,
    resolution: int,
    heldout_pairs: Sequence[Pair] = DEFAULT_HELDOUT_PAIRS,
) -> dict[str, Any]:
    """Example `index` of `split`, as stored by the builder but with a raw uint8 `image`."""
    return _example(seed, split, index, resolution, split_pairs(split, heldout_pairs))


def _example(
    seed: int, split: str, index: int, resolution: int, pairs: Sequence[Pair]
) -> dict[str, Any]:
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    attrs, center = sample_attributes_and_center(rng, pairs)
    return {
        "image": render(attrs, center, resolution),
        "caption": caption(**attrs),
        **attrs,
        "center": np.asarray(center, dtype=np.float32),
        "combination": np.int32(combination_index(attrs)),
    }


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """Config of the `shapes` builder; every field below changes the generated bytes."""

    resolution: int = 32
    train_size: int = 50_000
    validation_size: int = 2_000
    heldout_size: int = 2_000
    heldout_pairs: tuple[Pair, ...] = DEFAULT_HELDOUT_PAIRS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise ValueError(
                f"resolution must be a power of two in {RESOLUTIONS}, got {self.resolution!r}"
            )
        for field in ("train_size", "validation_size", "heldout_size"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
                raise ValueError(f"{field} must be a positive int, got {getattr(self, field)!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        self.heldout_pairs = validate_heldout_pairs(self.heldout_pairs)

    def split_size(self, split: str) -> int:
        """Number of examples of `split`."""
        return {
            "train": self.train_size,
            "validation": self.validation_size,
            "heldout": self.heldout_size,
        }[split]


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Builder of the procedural `shapes` dataset (offline; `download_and_prepare` renders it)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    # Nothing is downloaded. Also keeps TFDS from locating this file to look for a checksums
    # file, which imports `importlib_resources`, a package TFDS only installs on Python < 3.9.
    url_infos = None
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        ShapesConfig(name="r32", resolution=32, description="32x32 images, default sizes."),
        ShapesConfig(name="r64", resolution=64, description="64x64 images, default sizes."),
    ]

    def __init__(self, *, file_format: str | None = None, **kwargs: Any) -> None:
        """Like any TFDS builder, but writes array_record (no TensorFlow needed) by default."""
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        resolution = self.builder_config.resolution
        features = {
            "image": tfds.features.Image(
                shape=(resolution, resolution, 3), encoding_format="png"
            ),
            "caption": tfds.features.Text(),
            **{
                name: tfds.features.ClassLabel(names=ATTRIBUTE_VALUES[name])
                for name in ATTRIBUTE_NAMES
            },
            "center": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            "combination": tfds.features.Scalar(dtype=np.int32),
        }
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        config = self.builder_config
        pairs = split_pairs(split, config.heldout_pairs)
        for index in range(config.split_size(split)):
            example = _example(config.seed, split, index, config.resolution, pairs)
            example["image"] = _encode_png(example["image"])
            yield index, example


def shapes_builder(
    data_dir: str,
    resolution: int,
    train_size: int,
    validation_size: int,
    heldout_size: int,
    seed: int = 0,
    heldout_pairs: Sequence[Pair] = DEFAULT_HELDOUT_PAIRS,
) -> Shapes:
    """An array_record `Shapes` builder whose config name encodes every byte-changing field.

    E.g. `r32_n50000-2000-2000_s0_h1a2b3c4d` (the last part hashes the held-out pairs), so
    differently configured datasets never share a directory under `data_dir`.
    """
    pairs = validate_heldout_pairs(heldout_pairs)
    pairs_hash = hashlib.sha256(repr(pairs).encode()).hexdigest()[:8]
    config = ShapesConfig(
        name=f"r{resolution}_n{train_size}-{validation_size}-{heldout_size}_s{seed}_h{pairs_hash}",
        resolution=resolution,
        train_size=train_size,
        validation_size=validation_size,
        heldout_size=heldout_size,
        heldout_pairs=pairs,
        seed=seed,
    )
    return Shapes(data_dir=data_dir, config=config, file_format="array_record")
