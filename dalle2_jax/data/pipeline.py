"""Input pipeline: TFDS array_record sources read through grain.

Why grain rather than tf.data: grain reads TFDS `array_record` files through `tfds.data_source`
without TensorFlow, its order is a pure function of (seed, index) so it is deterministic across
restarts and host counts, and its iterator state is a few bytes of JSON that the checkpoint
stores, which makes resume exact. Each host reads only its own slice of each global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from dalle2_jax.data import shapes
from dalle2_jax.parallel import distributed

Example = Mapping[str, Any]


class DatasetError(ValueError):
    """The configured dataset cannot be opened; the message names the config field."""


SYNTHETIC = "synthetic"


class SyntheticSource:
    """`data.name='synthetic'`: 1024 identical examples, a black `resolution` image and one caption.

    Nothing is read or generated: for compiling a config's steps where its dataset is not
    (`launch.aot`), whatever `data.resolution` the config names.
    """

    size = 1024

    def __init__(self, resolution: int):
        self.example = {"image": np.zeros((resolution, resolution, 3), np.uint8), "caption": b"a synthetic caption"}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return {"image": self.example["image"].copy(), "caption": self.example["caption"]}  # callers may mutate


def open_splits(data_cfg: Any, splits: Sequence[str]) -> dict[str, Any]:
    """Random-access sources for `splits` of the dataset named by `data.name`.

    `shapes` is procedural: it is generated into `data.data_dir` on first use. Any other name
    must be a TFDS dataset already prepared there in array_record format, but `synthetic`
    (`SyntheticSource`), which has every split.
    """
    if data_cfg.name == SYNTHETIC:
        return {split: SyntheticSource(data_cfg.resolution) for split in splits}
    data_dir = data_cfg.data_dir or None
    if data_cfg.name == "shapes":
        def make_builder():
            return shapes.shapes_builder(
                data_dir=data_dir,
                resolution=data_cfg.resolution,
                train_size=data_cfg.train_size,
                validation_size=data_cfg.validation_size,
                heldout_size=data_cfg.heldout_size,
                seed=data_cfg.dataset_seed,
            )

        if distributed.is_chief():
            make_builder().download_and_prepare()
        # Other hosts of a multi-host run read what host 0 wrote (a shared filesystem), once it
        # is there: a builder made before the files exist would know no splits.
        distributed.barrier(f"shapes dataset prepared in {data_dir}")
        builder = make_builder()
    else:
        try:
            builder = tfds.builder(data_cfg.name, data_dir=data_dir, file_format="array_record")
        except Exception as e:  # noqa: BLE001 - TFDS raises several kinds for an unknown name
            raise DatasetError(f"data.name={data_cfg.name!r}: no such TFDS dataset ({e})") from None
        if not builder.is_prepared():
            raise DatasetError(
                f"data.name={data_cfg.name!r}: not prepared under data.data_dir="
                f"{builder.data_dir_root!r}; run `tfds build {data_cfg.name} "
                "--file_format=array_record` there first"
            )
    available = set(builder.info.splits)
    for split in splits:
        if split not in available:
            raise DatasetError(f"data.name={data_cfg.name!r} has no split {split!r} ({sorted(available)})")
    if not data_cfg.cache_in_memory:
        return {split: builder.as_data_source(split=split) for split in splits}
    return {split: _in_memory(builder, split) for split in splits}


def _in_memory(builder: Any, split: str) -> InMemorySource:
    """The process's one InMemorySource of `split`, made on first use."""
    key = (str(builder.data_dir), split)
    if key not in _IN_MEMORY:
        _IN_MEMORY[key] = InMemorySource(builder.as_data_source(split=split))
    return _IN_MEMORY[key]


class InMemorySource:
    """A split whose examples stay in memory, decoded, once first read (`data.cache_in_memory`).

    Reading a shapes example (array_record, TFDS parsing, PNG decoding) costs ~0.45 ms of a CPU
    core, done by grain's threads on the cores that train. The main job reads the 32 px train
    split three times over in CLIP training, once to compute the prior's embeddings and again in
    decoder training, all in one process: cached, each example is decoded once. Only for datasets
    that fit in host memory (the 32 px shapes train split's pixels take 0.15 GB). The cached
    arrays are read-only, so a transform that edited one in place fails instead of changing later
    reads. (grain's own cache replays an iterator's stream; this one is by index, shared by every
    pipeline the process builds over the split.)
    """

    def __init__(self, source: Any):
        self._source = source
        self._examples: list[Example | None] = [None] * len(source)

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, index: int) -> Example:
        example = self._examples[index]
        if example is None:  # two threads may both decode it: the same example, stored twice
            example = dict(self._source[index])
            for value in example.values():
                if isinstance(value, np.ndarray):
                    value.flags.writeable = False
            self._examples[index] = example
        return dict(example)  # callers may add or replace keys


# Process-wide, so that the stages of one main job share the splits they read: (TFDS data_dir
# of the dataset's version, split) -> its InMemorySource.
_IN_MEMORY: dict[tuple[str, str], InMemorySource] = {}


def train_iterator(
    source: Any,
    transform: Callable[[Example], Example],
    global_batch_size: int,
    seed: int,
    num_threads: int,
    prefetch: int,
) -> grain.DatasetIterator:
    """Endless, shuffled (differently each epoch), batched iterator over this host's examples.

    The order is one global order, whatever the number of hosts: global batch k holds examples
    k * B .. (k + 1) * B - 1 of the shuffled stream, and host h reads (and transforms) only its
    contiguous slice of them, the h-th of `jax.process_count()`. Every host's iterator is therefore
    at the same position, the number of global batches read, and a checkpoint written by N hosts
    resumes on M hosts at the same batch.
    """
    count, index = jax.process_count(), jax.process_index()
    if global_batch_size % count:
        raise DatasetError(f"data.batch_size={global_batch_size} does not split evenly over {count} hosts")
    dataset = (
        grain.MapDataset.source(source)
        .shuffle(seed=seed % 2**32)
        .repeat()
        .map(transform)
        .batch(global_batch_size // count, drop_remainder=True)[index::count]
    )
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(dataset.to_iter_dataset(options))


def load_all(source: Any, transform: Callable[[Example], Example], limit: int = 0) -> dict[str, np.ndarray]:
    """Every example of a (small) split, transformed and stacked: for evaluation."""
    n = len(source) if limit <= 0 else min(limit, len(source))
    dataset = grain.MapDataset.source(source)[:n].map(transform).batch(n)
    return dataset[0]
