"""Zero-shot classification and text-to-image retrieval from CLIP embeddings (CLIP sec. 3.1).

Embeddings are L2-normalised, so dot products are cosine similarities.
"""

from __future__ import annotations

import numpy as np


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores per row, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def zero_shot_accuracy(image_embeds: np.ndarray, class_embeds: np.ndarray, labels: np.ndarray,
                       ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Fraction of images whose true class (caption) is among the k most similar captions."""
    top = _top_k(image_embeds @ class_embeds.T, max(ks))
    hits = top == labels[:, None]
    return {f"top{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}


def text_to_image_recall(image_embeds: np.ndarray, class_embeds: np.ndarray, labels: np.ndarray,
                         ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Recall@k of retrieving images from their caption.

    Each distinct caption present among the images is one query; a query hits when one of the k
    images ranked highest carries exactly that caption. (Images sharing a caption differ only in
    jitter, which the text does not describe, so any of them is a correct answer.)
    """
    queries = np.unique(labels)
    top = _top_k(class_embeds[queries] @ image_embeds.T, max(ks))
    hits = labels[top] == queries[:, None]
    return {f"recall@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}
