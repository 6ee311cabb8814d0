"""The CLIP stage's loss and evaluation metrics, and the hashed-word tokenizer on shapes captions."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from dalle2_jax.data import shapes
from dalle2_jax.data.tokenizer import HashedWordTokenizer
from dalle2_jax.evaluation import retrieval
from dalle2_jax.stages.clip import contrastive_loss


def _normalized(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_contrastive_loss_matches_numpy():
    rng = np.random.default_rng(0)
    images, texts = _normalized(rng.normal(size=(6, 4))), _normalized(rng.normal(size=(6, 4)))
    loss, accuracy = contrastive_loss(jnp.asarray(images), jnp.asarray(texts), jnp.float32(10.0))
    logits = 10.0 * images @ texts.T

    def cross_entropy(z):
        z = z - z.max(axis=1, keepdims=True)
        return np.mean(np.log(np.exp(z).sum(axis=1)) - np.diag(z))

    np.testing.assert_allclose(loss, (cross_entropy(logits) + cross_entropy(logits.T)) / 2, rtol=1e-5)
    assert accuracy == np.mean(np.argmax(logits, axis=1) == np.arange(6))


def test_contrastive_loss_rewards_alignment():
    rng = np.random.default_rng(1)
    texts = _normalized(rng.normal(size=(8, 16)))
    aligned, _ = contrastive_loss(jnp.asarray(texts), jnp.asarray(texts), jnp.float32(100.0))
    shuffled, accuracy = contrastive_loss(jnp.asarray(texts[::-1]), jnp.asarray(texts), jnp.float32(100.0))
    assert aligned < 0.01 < shuffled
    assert accuracy == 0.0


def test_zero_shot_and_recall_count_the_right_hits():
    classes = np.eye(4)
    images = np.array([[1, 0, 0, 0], [0, 0.9, 0.1, 0], [0.1, 0.8, 0, 0.7], [0, 0, 0.2, 1.0]], float)
    labels = np.array([0, 2, 3, 3])
    acc = retrieval.zero_shot_accuracy(images, classes, labels, ks=(1, 2))
    # top-1 predictions: 0, 1, 1, 3 -> hits 0 and 3; top-2 adds image 1 (class 2) and image 2 (class 3).
    assert acc == {"top1": 0.5, "top2": 1.0}
    recall = retrieval.text_to_image_recall(images, classes, labels, ks=(1, 2))
    # queries 0, 2, 3: best images 0 (hit), 3 (label 3, miss), 3 (hit); top-2 for class 2: 3 then 1 (hit).
    assert recall == {"recall@1": pytest.approx(2 / 3), "recall@2": 1.0}


def test_hashed_words_keep_every_shapes_word_apart():
    tokenizer = HashedWordTokenizer(context_length=16, vocab_size=8192)
    words = sorted({w for c in shapes.all_captions() for w in c.split()})
    ids = tokenizer.encode(words)[:, 1]
    assert len(set(ids.tolist())) == len(words)
    rows = tokenizer.encode(shapes.all_captions())
    assert len({r.tobytes() for r in rows}) == 720
    assert not tokenizer.truncated(shapes.all_captions()).any()
    assert tokenizer.decode(rows[:1]) == [shapes.all_captions()[0]]


def test_hashed_words_layout_and_truncation():
    tokenizer = HashedWordTokenizer(context_length=5, vocab_size=100)
    row = tokenizer.encode(["A red, circle"])[0]
    assert row[0] == tokenizer.sot_id and row[4] == tokenizer.eot_id
    assert len(set(row[1:4].tolist())) == 3  # 'a', 'red', ',' ('circle' is cut)
    assert tokenizer.truncated(["A red, circle", "a red"]).tolist() == [True, False]
    assert row.max() < 100
