"""Evaluation metrics (numpy): retrieval, zero-shot classification, and later image metrics."""
