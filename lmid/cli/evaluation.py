"""Evaluation steps (segmenter, metrics, aggregate, report). Filled in by the evaluation module."""

from __future__ import annotations


def register(sub) -> None:
    pass
