"""Quality control from plane disagreement: agreement scores and a failure flag per case.

- ``agreement_dice``: mean pairwise Dice between the three binary plane masks (1.0 when no
  plane predicts any lesion).
- ``unanimous_fraction``: share of the fused lesion volume where all three planes agree
  (1.0 when the fused mask is empty).
- ``qc_flag``: ``low_agreement`` when ``agreement_dice`` < 0.5 while some plane predicts
  lesion; ``implausible_volume`` when the fused lesion exceeds 300 ml or half of the brain;
  otherwise null.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations

import numpy as np
import pandas as pd

from stroke_ray.fusion import THRESHOLD
from stroke_ray.metrics import confusion_counts, ratios_from_counts

__all__ = [
    "agreement_scores",
    "qc_flag",
    "qc_points",
    "dice_agreement_correlation",
    "LOW_AGREEMENT",
    "MAX_PLAUSIBLE_ML",
]

LOW_AGREEMENT = 0.5
MAX_PLAUSIBLE_ML = 300.0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return ratios_from_counts(**confusion_counts(a, b))["dice"]


def agreement_scores(
    probabilities: Mapping[str, np.ndarray], votes: np.ndarray, fused: np.ndarray
) -> dict[str, float]:
    """Mean pairwise plane Dice and the unanimous share of the fused lesion."""
    masks = [p >= THRESHOLD for p in probabilities.values()]
    pairwise = [_dice(a, b) for a, b in combinations(masks, 2)]
    fused_voxels = int(fused.sum())
    unanimous = int(np.logical_and(fused > 0, votes == len(masks)).sum())
    return {
        "agreement_dice": float(np.mean(pairwise)) if pairwise else 1.0,
        "unanimous_fraction": 1.0 if fused_voxels == 0 else unanimous / fused_voxels,
    }


def qc_flag(
    scores: Mapping[str, float], volume_ml: float, brain_ml: float, any_lesion: bool
) -> str | None:
    """A short reason when a case looks like a failure, else None."""
    if volume_ml > MAX_PLAUSIBLE_ML or (brain_ml > 0 and volume_ml > 0.5 * brain_ml):
        return "implausible_volume"
    if any_lesion and scores["agreement_dice"] < LOW_AGREEMENT:
        return "low_agreement"
    return None


def qc_points(metrics: pd.DataFrame) -> pd.DataFrame:
    """The labelled fused rows that have both a Dice and an agreement score."""
    fused = metrics[(metrics["source"] == "fused") & (metrics["status"] == "ok")]
    return fused.dropna(subset=["dice", "agreement_dice"])


def dice_agreement_correlation(metrics: pd.DataFrame) -> float | None:
    """Pearson r of fused Dice with plane agreement; None under 3 cases or constant values."""
    points = qc_points(metrics)
    if len(points) < 3 or points["dice"].std() == 0 or points["agreement_dice"].std() == 0:
        return None
    return float(np.corrcoef(points["agreement_dice"], points["dice"])[0, 1])
