"""Tests for stroke_ray.validation: scoring planes and votes on validation cases, and the
suggested minimum lesion size (the pure parts; the run-level pass is in test_train.py)."""

from __future__ import annotations

import numpy as np
import pytest

from stroke_ray.validation import (
    MIN_LESION_ML_CANDIDATES,
    case_scores,
    suggest_min_lesion_ml,
    summarise_validation,
)

SPACING = (2.0, 2.0, 2.0)  # 8 µl per voxel


def _truth() -> np.ndarray:
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[4:10, 4:10, 4:10] = 1  # 216 voxels, 1.7 ml
    return truth


def test_case_scores_try_every_size_on_fused_masks_only():
    truth = _truth()
    speckled = truth.copy()
    speckled[15, 15, 15] = speckled[2, 17, 12] = 1  # two one-voxel false lesions
    rows = case_scores({"axial": speckled, "fused_soft": speckled}, truth, SPACING)
    assert [r["min_lesion_ml"] for r in rows if r["source"] == "axial"] == [0.0]
    fused = {r["min_lesion_ml"]: r for r in rows if r["source"] == "fused_soft"}
    assert sorted(fused) == sorted(MIN_LESION_ML_CANDIDATES)
    assert fused[0.0]["lesion_f1"] == pytest.approx(2 / 4)  # 1 found, 2 false
    assert fused[0.01]["lesion_f1"] == 1.0 and fused[0.01]["dice"] == 1.0
    assert fused[0.01]["score"] == 1.0
    assert fused[0.5]["score"] == 1.0  # 1.7 ml survives 0.5 ml


def test_suggestion_is_the_smallest_size_with_the_best_mean_score():
    rows = [
        {"source": "fused_soft", "min_lesion_ml": 0.0, "score": 0.5},
        {"source": "fused_soft", "min_lesion_ml": 0.0, "score": 0.7},
        {"source": "fused_soft", "min_lesion_ml": 0.05, "score": 0.8},
        {"source": "fused_soft", "min_lesion_ml": 0.05, "score": 0.6},
        {"source": "fused_soft", "min_lesion_ml": 0.1, "score": 0.9},
        {"source": "fused_soft", "min_lesion_ml": 0.1, "score": 0.7},
        {"source": "fused_soft", "min_lesion_ml": 0.2, "score": 0.8},
        {"source": "fused_soft", "min_lesion_ml": 0.2, "score": 0.8},
        {"source": "fused_majority", "min_lesion_ml": 0.0, "score": 0.9},
        {"source": "fused_majority", "min_lesion_ml": 0.1, "score": 0.9},
    ]
    assert suggest_min_lesion_ml(rows, "fused_soft") == 0.1  # 0.8 ties at 0.2: smaller wins
    assert suggest_min_lesion_ml(rows, "fused_majority") == 0.0  # no gain: keep everything
    assert suggest_min_lesion_ml(rows, "fused_weighted") == 0.0
    summary = summarise_validation(rows, cases=2)
    assert summary["cases"] == 2
    assert summary["suggested_min_lesion_ml"] == {"majority": 0.0, "soft": 0.1}
    assert summary["sources"]["fused_soft"]["0.1"]["score"] == pytest.approx(0.8)
