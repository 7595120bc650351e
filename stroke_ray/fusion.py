"""Fuse the three plane predictions of a case into one lesion mask, per voxel.

- ``majority`` (default): lesion where at least 2 of the 3 planes vote lesion (p ≥ 0.5).
- ``weighted``: each plane's vote counts with its weight (by default the plane's
  validation Dice from the run); lesion where the weighted vote share is ≥ 0.5.
- ``soft``: lesion where the mean of the three plane probabilities is ≥ 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["FUSION_MODES", "THRESHOLD", "fuse", "vote_count", "probability_spread"]

FUSION_MODES: tuple[str, ...] = ("majority", "weighted", "soft")
THRESHOLD = 0.5


def vote_count(probabilities: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per voxel, how many planes vote lesion (0–3) as uint8."""
    votes = np.zeros(next(iter(probabilities.values())).shape, dtype=np.uint8)
    for probability in probabilities.values():
        votes += probability >= THRESHOLD
    return votes


def probability_spread(probabilities: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per voxel, max − min of the plane probabilities (0 = the planes agree)."""
    stack = np.stack([np.asarray(p, dtype=np.float32) for p in probabilities.values()])
    return stack.max(axis=0) - stack.min(axis=0)


def _weights(planes: list[str], weights: Mapping[str, float] | None) -> np.ndarray:
    if weights is None:
        return np.ones(len(planes))
    values = np.array([max(float(weights[plane]), 0.0) for plane in planes])
    return values if values.sum() > 0 else np.ones(len(planes))


def fuse(
    probabilities: Mapping[str, np.ndarray],
    mode: str = "majority",
    weights: Mapping[str, float] | None = None,
) -> np.ndarray:
    """The fused binary mask (uint8 0/1) of the plane probability volumes."""
    planes = list(probabilities)
    if mode == "majority":
        return (vote_count(probabilities) * 2 > len(planes)).astype(np.uint8)
    if mode == "weighted":
        plane_weights = _weights(planes, weights)
        share = (
            sum(
                w * (probabilities[p] >= THRESHOLD)
                for p, w in zip(planes, plane_weights, strict=True)
            )
            / plane_weights.sum()
        )
        return (share >= THRESHOLD).astype(np.uint8)
    if mode == "soft":
        mean = sum(np.asarray(probabilities[p], dtype=np.float32) for p in planes) / len(planes)
        return (mean >= THRESHOLD).astype(np.uint8)
    raise ValueError(f"unknown fusion mode {mode!r}; choose one of {FUSION_MODES}")
