"""The main job's fixed text-to-image prompt set (evaluation/generation.py): balanced and fixed."""

import collections

import pytest

from dalle2_jax.data import shapes
from dalle2_jax.evaluation.generation import shapes_prompts


@pytest.mark.parametrize("num_seen, num_heldout", [(48, 24), (7, 5)])
def test_every_attribute_value_appears_equally_often_in_each_group(num_seen, num_heldout):
    prompts = shapes_prompts(num_seen, num_heldout)
    heldout_pairs = set(shapes.DEFAULT_HELDOUT_PAIRS)
    for group, count in (("seen", num_seen), ("heldout", num_heldout)):
        chosen = [attrs for _, attrs, g in prompts if g == group]
        assert len(chosen) == count
        pairs = [(a["color"], a["shape"]) for a in chosen]
        assert all((pair in heldout_pairs) == (group == "heldout") for pair in pairs)
        group_pairs = shapes.split_pairs("heldout" if group == "heldout" else "validation")
        for name, values, column in (("pair", group_pairs, pairs),
                                     *((n, shapes.ATTRIBUTE_VALUES[n], [a[n] for a in chosen])
                                       for n in ("background", "size", "position"))):
            counts = collections.Counter(column)
            per_value = [counts[v] for v in values]
            assert max(per_value) - min(per_value) <= 1, (group, name, counts)


def test_shapes_appear_at_every_position_and_the_set_is_fixed():
    prompts = shapes_prompts(48, 24)
    seen = [attrs for _, attrs, g in prompts if g == "seen"]
    assert {a["shape"] for a in seen} == set(shapes.SHAPES)
    assert {a["position"] for a in seen} == set(shapes.POSITIONS)
    assert len({(a["shape"], a["position"]) for a in seen}) >= 15  # attributes not tied to each other
    assert shapes_prompts(48, 24) == prompts
    assert [p for p in shapes_prompts(10, 24) if p[2] == "heldout"] == [p for p in prompts if p[2] == "heldout"]
    assert all(caption == shapes.caption(**attrs) for caption, attrs, _ in prompts)
