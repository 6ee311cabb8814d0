"""Precomputed CLIP embeddings on disk: how the prior is trained at scale (unCLIP sec. 2.2).

Layout of one split: `DIR/SPLIT/FIELD-NNNNN.npy` shards of `shard_size` examples for each field
(`text_embed` [E], `text_encodings` [L, W], `text_mask` [L], `image_embed` [E], and `combination`
for shapes), `DIR/SPLIT/captions.txt` (one caption a line) and `DIR/SPLIT/done.json`, written
last, which marks the split complete. Shards are memory-mapped when read, so a split far larger
than host memory trains fine, and each host reads only the examples grain gives it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np
from etils import epath

DONE = "done.json"


class EmbeddingsError(ValueError):
    """A split of embeddings is missing or incomplete."""


def is_complete(directory: str | os.PathLike, split: str) -> bool:
    return (epath.Path(directory) / split / DONE).exists()


def write_split(directory: str | os.PathLike, split: str, arrays: Mapping[str, np.ndarray],
                captions: list[str], shard_size: int = 16384) -> None:
    """Writes one split's arrays (equal leading sizes) and captions; `done.json` comes last."""
    out = epath.Path(directory) / split
    out.mkdir(parents=True, exist_ok=True)
    count = len(captions)
    for name, array in arrays.items():
        if len(array) != count:
            raise ValueError(f"{name} has {len(array)} rows, captions {count}")
        for shard, start in enumerate(range(0, count, shard_size)):
            with (out / f"{name}-{shard:05d}.npy").open("wb") as f:
                np.save(f, np.ascontiguousarray(array[start:start + shard_size]))
    (out / "captions.txt").write_text("".join(c.replace("\n", " ") + "\n" for c in captions))
    (out / DONE).write_text(json.dumps({"count": count, "shard_size": shard_size, "fields": sorted(arrays)}))


class EmbeddingSource:
    """Random access to one complete split: `source[i]` is a dict of that example's arrays."""

    def __init__(self, directory: str | os.PathLike, split: str):
        path = epath.Path(directory) / split
        if not (path / DONE).exists():
            raise EmbeddingsError(f"{path}: no complete embeddings split ({DONE} missing)")
        meta = json.loads((path / DONE).read_text())
        self._count, self._shard_size = meta["count"], meta["shard_size"]
        num_shards = -(-self._count // self._shard_size)
        self._fields = {
            name: [np.load(os.fspath(path / f"{name}-{i:05d}.npy"), mmap_mode="r") for i in range(num_shards)]
            for name in meta["fields"]
        }
        self.captions = (path / "captions.txt").read_text().splitlines()

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self._count:
            raise IndexError(index)
        shard, offset = divmod(int(index), self._shard_size)
        return {name: np.array(shards[shard][offset]) for name, shards in self._fields.items()}

    def all(self, limit: int = 0) -> dict[str, np.ndarray]:
        """Every example (or the first `limit`) of every field, stacked."""
        n = self._count if limit <= 0 else min(limit, self._count)
        return {name: np.concatenate(shards)[:n] for name, shards in self._fields.items()}
