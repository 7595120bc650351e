"""Fuse the plane predictions of a case into one lesion mask, per voxel.

A plane votes lesion where its probability is ≥ 0.5 (``THRESHOLD``). Ties are decided once
for every vote: a voxel is lesion only where **more than half** of the (weighted) votes say
so; exactly half is background.

- ``majority`` (default): lesion where more than half of the planes vote lesion: 2 of 3,
  and with two planes both (a run with fewer than three planes is warned about).
- ``weighted``: each plane's vote counts with its weight (by default the plane's
  validation Dice from the run); lesion where the lesion votes weigh more than half of the
  total. With weights (0.5, 0.25, 0.25) the first plane alone is a tie, so background: no
  plane outvotes the two others. Negative weights count as 0; all-zero weights as equal.
- ``soft``: lesion where the mean of the plane probabilities is ≥ 0.5 (the plane rule applied
  to the mean probability).

Against speckle false positives, :func:`remove_small_lesions` drops fused lesions (26-connected
components, as the lesion-wise metrics count them) smaller than a volume in ml
(``SegmentConfig.min_lesion_ml``; by default the value the run chose on its validation
cases, :mod:`stroke_ray.validation`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import cc3d
import numpy as np

from stroke_ray.config import FUSION_MODES
from stroke_ray.metrics import bounding_box

__all__ = [
    "FUSION_MODES",
    "THRESHOLD",
    "fuse",
    "vote_count",
    "probability_spread",
    "min_lesion_voxels",
    "remove_small_lesions",
]

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
        return (vote_count(probabilities).astype(np.int32) * 2 > len(planes)).astype(np.uint8)
    if mode == "weighted":
        plane_weights = _weights(planes, weights)
        lesion_weight = sum(
            w * (probabilities[p] >= THRESHOLD) for p, w in zip(planes, plane_weights, strict=True)
        )
        # a relative tolerance keeps exact ties ties despite floating-point sums
        return (lesion_weight * 2 > plane_weights.sum() * (1 + 1e-9)).astype(np.uint8)
    if mode == "soft":
        mean = sum(np.asarray(probabilities[p], dtype=np.float32) for p in planes) / len(planes)
        return (mean >= THRESHOLD).astype(np.uint8)
    raise ValueError(f"unknown fusion mode {mode!r}; choose one of {FUSION_MODES}")


def min_lesion_voxels(min_lesion_ml: float, spacing_mm: Sequence[float]) -> int:
    """The smallest voxel count whose volume is not below ``min_lesion_ml`` (0 keeps all)."""
    if not min_lesion_ml or min_lesion_ml <= 0:
        return 0
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    return math.ceil(min_lesion_ml / voxel_ml - 1e-9)


def remove_small_lesions(
    mask: np.ndarray, min_lesion_ml: float, spacing_mm: Sequence[float]
) -> np.ndarray:
    """``mask`` (uint8 0/1) without its 26-connected components of less than ``min_lesion_ml``."""
    threshold = min_lesion_voxels(min_lesion_ml, spacing_mm)
    box = bounding_box(mask) if threshold > 1 else None
    if box is None:
        return mask
    kept = np.zeros_like(mask)  # components only within the mask's box: labelled there
    kept[box] = cc3d.dust(
        np.ascontiguousarray(mask[box]), threshold=threshold, connectivity=26, binary_image=True
    )
    return kept
