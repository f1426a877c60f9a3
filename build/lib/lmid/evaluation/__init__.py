"""Evaluation: the target-only K-Means segmenter, per-slice metrics, statistics and the tables."""
