"""The input pipeline's in-memory cache of decoded examples."""

import ml_collections
import numpy as np
import pytest

from dalle2_jax.data import pipeline


class CountingSource:
    """A random-access source that counts how often each example is read."""

    def __init__(self, size: int):
        self.reads = [0] * size

    def __len__(self) -> int:
        return len(self.reads)

    def __getitem__(self, index: int):
        self.reads[index] += 1
        return {"image": np.full((2, 2, 3), index, np.uint8), "label": index}


def test_in_memory_source_decodes_each_example_once():
    inner = CountingSource(5)
    cached = pipeline.InMemorySource(inner)
    assert len(cached) == 5
    for _ in range(3):
        for index in range(5):
            example = cached[index]
            assert example["label"] == index and np.all(example["image"] == index)
    assert inner.reads == [1] * 5


def test_in_memory_source_cannot_be_changed_through_what_it_returns():
    cached = pipeline.InMemorySource(CountingSource(2))
    example = cached[1]
    example["label"] = 7  # the caller's own dict
    del example["image"]
    assert cached[1]["label"] == 1 and "image" in cached[1]
    with pytest.raises(ValueError, match="read-only"):
        cached[1]["image"][0, 0, 0] = 9


def _shapes_config(data_dir: str, cache: bool) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "name": "shapes", "data_dir": data_dir, "resolution": 32, "train_size": 16, "validation_size": 4,
        "heldout_size": 4, "dataset_seed": 0, "cache_in_memory": cache})


def test_open_splits_shares_one_cache_per_split_and_reads_the_same_examples(tmp_path):
    cached = pipeline.open_splits(_shapes_config(str(tmp_path), True), ["train", "heldout"])
    again = pipeline.open_splits(_shapes_config(str(tmp_path), True), ["train"])
    plain = pipeline.open_splits(_shapes_config(str(tmp_path), False), ["train"])["train"]
    assert isinstance(cached["train"], pipeline.InMemorySource) and again["train"] is cached["train"]
    assert cached["heldout"] is not cached["train"] and not isinstance(plain, pipeline.InMemorySource)
    for index in range(len(plain)):
        a, b = cached["train"][index], plain[index]
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])

