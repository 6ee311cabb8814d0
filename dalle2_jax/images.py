"""Image conversions and files: model range <-> uint8, grids, PNG writing."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float images in [-1, 1] -> uint8 [0, 255] (rounded, clipped)."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def resize_nearest(images: np.ndarray, size: int) -> np.ndarray:
    """[N, R, R, C] -> [N, size, size, C] by pixel repetition (size a multiple of R): for grids."""
    factor = size // images.shape[1]
    if factor * images.shape[1] != size:
        raise ValueError(f"cannot repeat {images.shape[1]} px images to {size} px")
    return np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)


def grid(images: np.ndarray | Sequence[np.ndarray], columns: int = 0, pad: int = 2, fill: int = 255) -> np.ndarray:
    """uint8 [N, H, W, 3] images (smaller ones repeated up to the largest size) -> one uint8 grid
    image, row-major, `columns` wide (0: about square), `pad` pixels of `fill` between cells."""
    size = max(image.shape[0] for image in images)
    images = np.stack([resize_nearest(np.asarray(image)[None], size)[0] for image in images])
    n = len(images)
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    cell = size + pad
    out = np.full((rows * cell + pad, columns * cell + pad, 3), fill, np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        out[pad + r * cell:pad + r * cell + size, pad + c * cell:pad + c * cell + size] = image
    return out


def write_png(path: str | epath.Path, image: np.ndarray) -> None:
    """Writes a uint8 [H, W, 3] image as PNG, through a temporary file so a reader never sees half."""
    path = epath.Path(path)
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def write_sample_dir(out_dir: str | epath.Path, pictures: np.ndarray, records: Sequence[Mapping[str, Any]],
                     columns: int = 0) -> None:
    """The sampler's output: `NNNN.png` per image, `grid.png` of all, and `manifest.jsonl` with one
    JSON object per image (its record plus `"png": "NNNN.png"`), in order."""
    if len(pictures) != len(records):
        raise ValueError(f"{len(pictures)} images but {len(records)} records")
    out = epath.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, (picture, record) in enumerate(zip(pictures, records)):
        name = f"{k:04d}.png"
        write_png(out / name, picture)
        lines.append(json.dumps({"png": name, **record}))
    write_png(out / "grid.png", grid(list(pictures), columns))
    (out / "manifest.jsonl").write_text("".join(line + "\n" for line in lines))
