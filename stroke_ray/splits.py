"""Case-level splits: train/validation, train/test and K folds (never by slice)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = ["split_cases", "kfold_cases"]


def _shuffled(case_ids: Sequence[str], seed: int) -> list[str]:
    ordered = sorted(case_ids)
    duplicates = sorted(case for case, count in Counter(ordered).items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate case ids {duplicates}: a case would land on both sides")
    order = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in order]


def split_cases(
    case_ids: Sequence[str], holdout_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Split case ids into ``train`` and ``val``; at least one case on each side (n ≥ 2)."""
    if len(case_ids) < 2:
        raise ValueError(f"need at least 2 cases to split, got {len(case_ids)}")
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be between 0 and 1, got {holdout_fraction}")
    shuffled = _shuffled(case_ids, seed)
    held_out = int(np.clip(round(holdout_fraction * len(shuffled)), 1, len(shuffled) - 1))
    return {"train": sorted(shuffled[held_out:]), "val": sorted(shuffled[:held_out])}


def kfold_cases(case_ids: Sequence[str], folds: int, seed: int) -> list[dict[str, list[str]]]:
    """K case-level folds: each case is in ``test`` exactly once."""
    if not 2 <= folds <= len(case_ids):
        raise ValueError(f"folds must be between 2 and the number of cases ({len(case_ids)})")
    shuffled = _shuffled(case_ids, seed)
    parts = [shuffled[k::folds] for k in range(folds)]
    return [
        {
            "train": sorted(c for j, part in enumerate(parts) if j != k for c in part),
            "test": sorted(parts[k]),
        }
        for k in range(folds)
    ]
