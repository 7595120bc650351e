"""Tests for stroke_ray.case_outputs: a case's plane predictions become masks on the source
grid (whatever its orientation) and one metric row per source."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from helpers import affine_for, write_case
from scipy import ndimage

from stroke_ray.case_outputs import (
    CaseMasks,
    FusionSettings,
    case_masks,
    case_rows,
    error_row,
    voxel_ml,
)
from stroke_ray.config import PLANES
from stroke_ray.inference import PlanePrediction
from stroke_ray.metrics import evaluate
from stroke_ray.planes import brain_slice_indices, volume_to_slices
from stroke_ray.preprocess import Prepared, prepare
from stroke_ray.volumes import CaseVolumes, read_case

SHAPE = (12, 14, 10)
ZOOMS = (1.0, 2.0, 1.5)
COMMON = {"run_id": "run7", "fusion": "majority"}


def _volumes(tmp_path: Path, axcodes: str) -> CaseVolumes:
    return read_case(write_case(tmp_path, "c1", SHAPE, affine_for(axcodes, ZOOMS), seed=4))


def _prediction(volume: np.ndarray, brain: np.ndarray, plane: str) -> PlanePrediction:
    """What predict_plane returns for a model whose probabilities are ``volume``."""
    indices = brain_slice_indices(brain, plane)
    slices = volume_to_slices(volume.astype(np.float32), plane)[indices]
    return indices, slices * volume_to_slices(brain, plane)[indices]


def _predictions(prepared: Prepared) -> dict[str, PlanePrediction]:
    """axial and coronal perfect, sagittal calls the rest of the brain lesion."""
    label, brain = prepared.label.astype(bool), prepared.brain
    return {
        "axial": _prediction(label, brain, "axial"),
        "coronal": _prediction(label * 0.75, brain, "coronal"),
        "sagittal": _prediction(brain & ~label, brain, "sagittal"),
    }


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PSL"])
def test_case_masks_are_on_the_source_grid(tmp_path: Path, axcodes: str):
    volumes = _volumes(tmp_path, axcodes)
    prepared = prepare(volumes)
    head = np.any(volumes.images != 0, axis=0)  # the brain in the source grid
    label = volumes.label.astype(bool)
    assert 0 < label.sum() < head.sum()

    result = case_masks(
        _predictions(prepared),
        prepared.brain,
        prepared.geometry,
        FusionSettings(extra_fusions=("weighted", "soft"), save_planes=True),
    )

    assert set(result.masks) == {*PLANES, "fused", "fused_weighted", "fused_soft"}
    for mask in result.masks.values():
        assert mask.shape == SHAPE and mask.dtype == np.uint8
    np.testing.assert_array_equal(result.masks["axial"], label)
    np.testing.assert_array_equal(result.masks["coronal"], label)
    np.testing.assert_array_equal(result.masks["sagittal"], head & ~label)
    np.testing.assert_array_equal(result.masks["fused"], label)  # 2 of 3
    np.testing.assert_array_equal(result.masks["fused_weighted"], label)
    # soft: mean probability (1 + 0.75 + 0) / 3 ≥ 0.5 on the lesion, 1/3 elsewhere in the brain
    np.testing.assert_array_equal(result.masks["fused_soft"], label)
    np.testing.assert_array_equal(result.votes, np.where(label, 2, head.astype(np.uint8)))
    assert result.brain_voxels == int(head.sum()) == int(prepared.brain.sum())
    np.testing.assert_allclose(result.probability, np.where(label, 1.75 / 3, head / 3), atol=1e-6)
    np.testing.assert_allclose(result.spread, np.where(label, 1.0, head * 1.0), atol=1e-6)
    assert result.plane_agreement["agreement_dice"] == pytest.approx(1 / 3)
    assert result.plane_agreement["unanimous_fraction"] == 0.0


def test_weighted_settings_reach_the_fused_mask(tmp_path: Path):
    volumes = _volumes(tmp_path, "LPS")
    prepared = prepare(volumes)
    head = np.any(volumes.images != 0, axis=0)
    sagittal_rules = {"axial": 0.1, "coronal": 0.1, "sagittal": 0.5}
    result = case_masks(
        _predictions(prepared),
        prepared.brain,
        prepared.geometry,
        FusionSettings(fusion="weighted", plane_weights=sagittal_rules),
    )
    np.testing.assert_array_equal(result.masks["fused"], head & ~volumes.label.astype(bool))
    assert result.probability is None and result.spread is None
    assert set(result.masks) == {"axial", "coronal", "sagittal", "fused"}


def _masks(label: np.ndarray) -> CaseMasks:
    empty = np.zeros_like(label)
    planes = {"axial": label, "coronal": label, "sagittal": empty}
    votes = (label * 2).astype(np.uint8)
    return CaseMasks(
        masks={**planes, "fused": label, "fused_soft": empty},
        votes=votes,
        plane_agreement={"agreement_dice": 1 / 3, "unanimous_fraction": 0.0},
        brain_voxels=label.size,
    )


def test_case_rows_one_per_source_with_qc_on_fused_only():
    label = np.zeros((6, 5, 4), np.uint8)
    label[1:4, 1:3, 1:3] = 1
    truth = np.roll(label, 1, axis=0)
    spacing = (1.0, 2.0, 3.0)
    rows = case_rows("c9", _masks(label), truth, spacing, COMMON)

    assert [row["source"] for row in rows] == [
        "axial",
        "coronal",
        "sagittal",
        "fused",
        "fused_soft",
    ]
    for row in rows:
        assert row["case_id"] == "c9" and row["run_id"] == "run7" and row["status"] == "ok"
        has_qc = row["source"] == "fused"
        for column in ("agreement_dice", "unanimous_fraction", "qc_flag"):
            assert (column in row) == has_qc, (row["source"], column)
    by_source = {row["source"]: row for row in rows}
    assert by_source["fused"]["fusion"] == "majority"
    assert by_source["fused_soft"]["fusion"] == "soft"
    assert by_source["fused"]["agreement_dice"] == pytest.approx(1 / 3)
    assert by_source["fused"]["qc_flag"] == "low_agreement"
    expected = evaluate(label, truth, spacing)
    for key, value in expected.items():
        got = by_source["fused"][key]
        assert got == value or (math.isnan(got) and math.isnan(value)), key
    assert by_source["sagittal"]["tp"] == 0 and by_source["sagittal"]["fn"] == int(truth.sum())


def test_case_rows_of_an_unlabelled_case_carry_volumes_only():
    label = np.zeros((6, 5, 4), np.uint8)
    label[1:4, 1:3, 1:3] = 1
    spacing = (1.0, 2.0, 3.0)
    rows = case_rows("c9", _masks(label), None, spacing, COMMON)
    assert len(rows) == 5
    for row in rows:
        assert row["status"] == "unlabelled"
        assert "dice" not in row and "tp" not in row
    by_source = {row["source"]: row for row in rows}
    assert by_source["fused"]["volume_pred_ml"] == pytest.approx(label.sum() * 6 / 1000)
    assert by_source["sagittal"]["volume_pred_ml"] == 0.0
    assert "qc_flag" in by_source["fused"] and "qc_flag" not in by_source["axial"]


def test_implausible_volume_is_flagged():
    label = np.ones((6, 5, 4), np.uint8)  # the whole brain
    rows = case_rows("c9", _masks(label), label, (1.0, 1.0, 1.0), COMMON)
    fused = next(row for row in rows if row["source"] == "fused")
    assert fused["qc_flag"] == "implausible_volume"


def test_error_row_and_voxel_volume():
    row = error_row("c3", "case c3: dwi broken", COMMON)
    expected = {
        "case_id": "c3",
        "source": "fused",
        "status": "error",
        "error": "case c3: dwi broken",
    }
    assert row == {**COMMON, **expected}
    assert voxel_ml((1.0, 2.0, 3.0)) == pytest.approx(0.006)
    assert voxel_ml((3.0, 3.0, 3.0)) == pytest.approx(0.027)


def test_resampled_case_votes_on_the_source_grid(tmp_path: Path):
    """Network grid of another voxel size: probabilities go back linearly, then the vote."""
    volumes = _volumes(tmp_path, "LPS")
    head = np.any(volumes.images != 0, axis=0)
    label = np.zeros(SHAPE, np.uint8)
    label[4:9, 4:9, 3:7] = 1
    label &= head
    volumes.label = label
    prepared = prepare(volumes, spacing_mm=(0.5, 0.5, 0.5))
    assert prepared.geometry.resampled
    result = case_masks(
        _predictions(prepared),
        prepared.brain,
        prepared.geometry,
        FusionSettings(extra_fusions=("soft",)),
    )
    for mask in result.masks.values():
        assert mask.shape == SHAPE and mask.dtype == np.uint8
    np.testing.assert_array_equal(result.masks["axial"], label)  # upsampled and back: exact
    np.testing.assert_array_equal(result.masks["fused"], label)
    np.testing.assert_array_equal(result.masks["fused_soft"], label)
    assert abs(result.brain_voxels - int(head.sum())) < 0.1 * head.sum()  # source voxels


def test_min_lesion_size_removes_small_fused_lesions_only(tmp_path: Path):
    volumes = _volumes(tmp_path, "RAS")
    head = np.any(volumes.images != 0, axis=0)
    big = np.zeros(SHAPE, np.uint8)
    big[3:7, 4:8, 3:6] = 1
    big &= head  # tens of voxels of 3 µl: over 0.01 ml
    lone = np.argwhere(head & ~ndimage.binary_dilation(big, iterations=2))[0]
    label = big.copy()
    label[tuple(lone)] = 1  # one voxel, 0.003 ml
    volumes.label = label
    prepared = prepare(volumes)
    settings = FusionSettings(extra_fusions=("soft",), min_lesion_ml=0.01)
    result = case_masks(_predictions(prepared), prepared.brain, prepared.geometry, settings)
    np.testing.assert_array_equal(result.masks["fused"], big)
    np.testing.assert_array_equal(result.masks["fused_soft"], big)
    np.testing.assert_array_equal(result.masks["axial"], label)  # planes are left as they are
