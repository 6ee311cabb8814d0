"""Tests of the built-in `shapes` dataset: exact rendering rules, captions, splits, TFDS build."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dalle2_jax.data import shapes

tfds.disable_progress_bar()

RED, WHITE = (220, 30, 30), (240, 240, 240)
SIZES = {"train": 60, "validation": 20, "heldout": 20}


def _attrs(shape: str, size: str, color: str = "red", background: str = "white") -> dict:
    return {"background": background, "color": color, "shape": shape, "size": size,
            "position": "center"}


def _inside(image: np.ndarray, i: int, j: int) -> bool:
    """Whether pixel (row i, column j) of a red-on-white image has the shape color."""
    if tuple(image[i, j]) == RED:
        return True
    assert tuple(image[i, j]) == WHITE
    return False


def _decoded(example: dict) -> tuple[dict[str, str], tuple[float, float]]:
    """Attribute names and center of an example read back through TFDS."""
    attrs = {name: shapes.ATTRIBUTE_VALUES[name][example[name]] for name in shapes.ATTRIBUTE_NAMES}
    return attrs, (float(example["center"][0]), float(example["center"][1]))


# ----------------------------------------------------------------------------- captions


def test_caption_format():
    assert (shapes.caption("white", "red", "circle", "small", "center")
            == "a small red circle in the center on a white background")
    assert (shapes.caption("black", "orange", "diamond", "large", "bottom")
            == "a large orange diamond at the bottom on a black background")


def test_all_combinations_order_and_uniqueness():
    combos = shapes.all_combinations()
    captions = shapes.all_captions()
    assert len(combos) == len(captions) == 720 == len(set(captions))
    assert combos[0] == _attrs("circle", "small")
    assert combos[1]["position"] == "left"  # position varies fastest
    assert combos[5] == _attrs("circle", "large")
    assert combos[-1] == {"background": "black", "color": "orange", "shape": "diamond",
                          "size": "large", "position": "bottom"}
    assert captions[1] == "a small red circle on the left on a white background"
    assert [shapes.combination_index(c) for c in combos] == list(range(720))
    with pytest.raises(ValueError, match="color"):
        shapes.combination_index({**combos[0], "color": "pink"})


def test_lookup_tables():
    assert shapes.BACKGROUND_RGB["gray"] == (128, 128, 128)
    assert shapes.COLOR_RGB["purple"] == (140, 50, 190)
    assert shapes.SIZE_SIDE == {"small": 0.30, "large": 0.50}
    assert shapes.POSITION_ANCHOR["top"] == (0.5, 0.25)
    assert shapes.POSITION_PHRASE["right"] == "on the right"


# ----------------------------------------------------------------------------- renderer


def test_render_colors_and_dtype():
    image = shapes.render(_attrs("square", "large", "blue", "black"), (0.5, 0.5), 32)
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    assert tuple(image[16, 16]) == (40, 70, 220)
    assert tuple(image[0, 0]) == (16, 16, 16)
    assert {tuple(p) for p in image.reshape(-1, 3)} == {(40, 70, 220), (16, 16, 16)}


def test_render_square_counts_and_edges():
    # Large at R=32: |j + 0.5 - 16| <= 8 keeps columns 8..23, so 16 x 16 pixels.
    image = shapes.render(_attrs("square", "large"), (0.5, 0.5), 32)
    assert (image == RED).all(-1).sum() == 256
    assert _inside(image, 8, 8) and _inside(image, 23, 23)
    assert not _inside(image, 7, 8) and not _inside(image, 8, 7) and not _inside(image, 24, 23)
    # Small at R=32: |j + 0.5 - 16| <= 4.8 keeps columns 11..20: 10 x 10.
    assert (shapes.render(_attrs("square", "small"), (0.5, 0.5), 32) == RED).all(-1).sum() == 100
    # Small at R=64 centered at (0.3, 0.6): x in [9.6, 28.8] px, y in [28.8, 48] px.
    image = shapes.render(_attrs("square", "small"), (0.3, 0.6), 64)
    assert (image == RED).all(-1).sum() == 19 * 19
    assert _inside(image, 29, 10) and _inside(image, 47, 28)
    assert not _inside(image, 28, 10) and not _inside(image, 29, 9)
    assert not _inside(image, 48, 28) and not _inside(image, 47, 29)


def test_render_circle_edges():
    image = shapes.render(_attrs("circle", "large"), (0.5, 0.5), 32)  # radius 8 px
    assert _inside(image, 16, 23)  # |d| = hypot(7.5, 0.5) px
    assert not _inside(image, 16, 24)  # 8.5 px
    assert _inside(image, 21, 21)  # hypot(5.5, 5.5) = 7.78 px
    assert not _inside(image, 22, 22)  # 9.19 px, though inside the bounding box
    assert not _inside(image, 19, 23)  # hypot(7.5, 3.5) = 8.28 px
    # In half-pixel units pixel offsets are odd u, v and the rule is u^2 + v^2 <= 16^2.
    odd = np.arange(-31, 32, 2)
    assert (image == RED).all(-1).sum() == (odd[:, None] ** 2 + odd[None, :] ** 2 <= 256).sum()
    image = shapes.render(_attrs("circle", "small"), (0.3, 0.6), 64)  # radius 9.6, c=(19.2, 38.4)
    assert _inside(image, 38, 28)  # hypot(9.3, 0.1)
    assert not _inside(image, 38, 29)  # 10.3
    assert _inside(image, 45, 25)  # hypot(6.3, 7.1) = 9.49
    assert not _inside(image, 46, 25) and not _inside(image, 45, 26)  # 10.26, 10.18


def test_render_diamond_edges_inclusive():
    image = shapes.render(_attrs("diamond", "large"), (0.5, 0.5), 32)  # |dx| + |dy| <= 8 px
    assert _inside(image, 16, 23)  # 7.5 + 0.5 = 8: on the boundary, inside
    assert not _inside(image, 16, 24)  # 9
    assert _inside(image, 11, 12) and not _inside(image, 11, 11)  # 8 and 9
    assert not _inside(image, 8, 8)  # a corner of the square is outside the diamond


def test_render_triangle_apex_up():
    image = shapes.render(_attrs("triangle", "large"), (0.5, 0.5), 32)
    rows = (image == RED).all(-1).sum(1)
    # Row i has dy = i - 15.5 px and keeps |j - 15.5| <= (i - 7.5) / 2: 2 * floor((i - 6.5) / 2).
    expected = [0] * 9 + [2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12, 12, 14, 14, 16] + [0] * 8
    assert rows.tolist() == expected and rows.sum() == 128
    assert _inside(image, 9, 15) and _inside(image, 9, 16) and not _inside(image, 9, 14)
    assert _inside(image, 23, 8) and _inside(image, 23, 23) and not _inside(image, 23, 7)
    assert not _inside(image, 24, 16)


def test_render_rejects_unknown_shape():
    with pytest.raises(ValueError, match="shape"):
        shapes.render(_attrs("star", "small"), (0.5, 0.5), 32)


# ----------------------------------------------------------------------------- sampling


def test_clip_center():
    # Large on the left with negative jitter: x is pinned to h = 0.25.
    assert shapes.clip_center((0.25 - 0.03, 0.51), "large") == (0.25, float(np.float32(0.51)))
    assert shapes.clip_center((0.78, 0.5), "large") == (0.75, 0.5)
    # float32 rounding never leaves [h, 1 - h] (float32(0.85) > 0.85).
    x, y = shapes.clip_center((0.0, 1.0), "small")
    assert 0.15 <= x < 0.1501 and 0.8499 < y <= 1 - 0.15
    assert x == float(np.float32(x)) and y == float(np.float32(y))


def test_sampled_centers_follow_jitter_and_clipping():
    pairs = shapes.split_pairs("train")
    left_large_x = []
    for k in range(3000):
        attrs, (x, y) = shapes.sample_attributes_and_center(np.random.default_rng(k), pairs)
        h = shapes.SIZE_SIDE[attrs["size"]] / 2
        ax, ay = shapes.POSITION_ANCHOR[attrs["position"]]
        assert h <= x <= 1 - h and h <= y <= 1 - h
        assert abs(x - ax) <= 0.04 + 1e-7 and abs(y - ay) <= 0.04 + 1e-7
        if attrs["position"] == "left" and attrs["size"] == "large":
            left_large_x.append(x)
    pinned = np.mean(np.asarray(left_large_x) == 0.25)  # negative jitter clips to exactly h
    assert len(left_large_x) > 100 and 0.35 < pinned < 0.65


def test_renders_of_vary_only_by_jitter():
    attrs = {"background": "white", "color": "red", "shape": "square", "size": "small", "position": "left"}
    renders = shapes.renders_of(attrs, 6, 32, np.random.default_rng(0))
    assert renders.shape == (6, 32, 32, 3) and renders.dtype == np.uint8
    assert len({r.tobytes() for r in renders}) > 1  # the jitter moves the square
    for render in renders:  # each is a render of the same attributes at a center near the anchor
        inside = np.argwhere(np.all(render == RED, axis=-1))
        center_x = (inside[:, 1].mean() + 0.5) / 32
        assert abs(center_x - shapes.POSITION_ANCHOR["left"][0]) <= shapes.JITTER + 1 / 32
        assert {tuple(p) for p in render.reshape(-1, 3)} == {RED, WHITE}


def test_split_pairs():
    train = shapes.split_pairs("train")
    assert len(train) == 20 and shapes.split_pairs("validation") == train
    assert not set(train) & set(shapes.DEFAULT_HELDOUT_PAIRS)
    assert set(shapes.split_pairs("heldout")) == set(shapes.DEFAULT_HELDOUT_PAIRS)
    assert shapes.split_pairs("heldout", [("red", "square")]) == (("red", "square"),)
    with pytest.raises(ValueError, match="heldout_pairs"):
        shapes.split_pairs("train", [("red", "star")])
    with pytest.raises(ValueError, match="split"):
        shapes.split_pairs("test")


def test_generate_example_is_deterministic_and_consistent():
    a = shapes.generate_example(3, "train", 7, 32)
    b = shapes.generate_example(3, "train", 7, 32)
    assert a["caption"] == b["caption"] and np.array_equal(a["image"], b["image"])
    others = [shapes.generate_example(s, "train", 7, 32)["caption"] for s in range(4, 12)]
    assert any(c != a["caption"] for c in others)
    # Each split has its own stream, even validation, which shares train's distribution.
    train, validation = ([shapes.generate_example(3, split, k, 32)["caption"] for k in range(8)]
                         for split in ("train", "validation"))
    assert train != validation
    attrs = {name: a[name] for name in shapes.ATTRIBUTE_NAMES}
    assert a["caption"] == shapes.caption(**attrs)
    assert a["combination"] == shapes.combination_index(attrs)
    assert np.array_equal(a["image"], shapes.render(attrs, tuple(a["center"].tolist()), 32))


# ----------------------------------------------------------------------------- TFDS builder


def test_config_validation():
    for resolution in (4, 48, 512):
        with pytest.raises(ValueError, match="resolution"):
            shapes.ShapesConfig(name="bad", resolution=resolution)
    with pytest.raises(ValueError, match="train_size"):
        shapes.ShapesConfig(name="bad", train_size=0)
    with pytest.raises(ValueError, match="resolution"):
        shapes.shapes_builder("/nonexistent", 48, 10, 10, 10)


def test_builder_names_encode_config(tmp_path):
    def name(**kwargs) -> str:
        args = {"resolution": 32, "train_size": 10, "validation_size": 2, "heldout_size": 3,
                **kwargs}
        return shapes.shapes_builder(str(tmp_path), **args).builder_config.name

    base = name()
    assert base.startswith("r32_n10-2-3_s0_h")
    variants = {name(resolution=64), name(train_size=11), name(validation_size=3),
                name(heldout_size=4), name(seed=1), name(heldout_pairs=[("red", "circle")])}
    assert len(variants | {base}) == 7
    assert name(heldout_pairs=shapes.DEFAULT_HELDOUT_PAIRS[::-1]) == base
    assert [c.name for c in shapes.Shapes.BUILDER_CONFIGS][:2] == ["r32", "r64"]
    registered = shapes.Shapes(data_dir=str(tmp_path), config="r64")
    assert registered.builder_config.resolution == 64 and registered.builder_config.seed == 0
    assert registered.info.file_format.value == "array_record"


def _build(data_dir: Path, resolution: int = 32, seed: int = 0) -> shapes.Shapes:
    builder = shapes.shapes_builder(str(data_dir), resolution, SIZES["train"],
                                    SIZES["validation"], SIZES["heldout"], seed=seed)
    builder.download_and_prepare()
    return builder


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> shapes.Shapes:
    return _build(tmp_path_factory.mktemp("shapes"))


@pytest.mark.parametrize("split", shapes.SPLITS)
def test_data_source_examples(built, split):
    source = built.as_data_source(split=split)
    assert len(source) == SIZES[split]
    allowed = set(shapes.split_pairs(split))
    for k, example in enumerate(source):
        image = example["image"]
        assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
        attrs, center = _decoded(example)
        assert (attrs["color"], attrs["shape"]) in allowed
        assert example["caption"].decode() == shapes.caption(**attrs)
        assert example["combination"] == shapes.combination_index(attrs)
        assert np.array_equal(image, shapes.render(attrs, center, 32))
        expected = shapes.generate_example(0, split, k, 32)  # stored in key order
        assert example["caption"].decode() == expected["caption"]
        assert np.array_equal(example["center"], expected["center"])


def test_data_source_by_name_and_resolution(built, tmp_path):
    source = tfds.data_source(f"shapes/{built.builder_config.name}", split="heldout",
                              data_dir=built.data_dir_root)
    assert source[0]["caption"] == built.as_data_source(split="heldout")[0]["caption"]
    example = _build(tmp_path, resolution=64).as_data_source(split="train")[0]
    assert example["image"].shape == (64, 64, 3)
    attrs, center = _decoded(example)
    assert np.array_equal(example["image"], shapes.render(attrs, center, 64))


def test_same_seed_same_bytes(built, tmp_path):
    again = _build(tmp_path)
    other = _build(tmp_path / "other_seed", seed=1)
    for split in shapes.SPLITS:
        pattern = f"shapes-{split}.array_record-*"
        files = sorted(Path(built.data_dir).glob(pattern))
        assert files and [f.read_bytes() for f in files] == [
            f.read_bytes() for f in sorted(Path(again.data_dir).glob(pattern))]
        first, second = built.as_data_source(split=split), again.as_data_source(split=split)
        assert all(np.array_equal(a["image"], b["image"]) and a["caption"] == b["caption"]
                   for a, b in zip(first, second, strict=True))
        captions = [e["caption"] for e in other.as_data_source(split=split)]
        assert captions != [e["caption"] for e in first]


def test_build_and_read_without_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "from dalle2_jax.data import shapes\n"
        f"b = shapes.shapes_builder({str(tmp_path)!r}, 8, 3, 2, 2)\n"
        "b.download_and_prepare()\n"
        "assert b.as_data_source(split='train')[2]['image'].shape == (8, 8, 3)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
