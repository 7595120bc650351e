"""Tests for stroke_ray.metrics: hand-counted cases and independent reimplementations."""

from __future__ import annotations

import math
from fractions import Fraction

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.distance import cdist

from stroke_ray.metrics import (
    METRIC_COLUMNS,
    confusion_counts,
    evaluate,
    evaluate_sources,
    lesion_detection,
    pooled_ratios,
    ratios_from_counts,
    surface_distances_mm,
)

RATIO_NAMES = ("dice", "iou", "precision", "recall", "specificity", "accuracy")


def _cube(flat: list[int]) -> np.ndarray:
    """Return a 2×2×2 mask from eight 0/1 values."""
    return np.array(flat, dtype=np.uint8).reshape(2, 2, 2)


# (pred, truth, (tp, fp, fn, tn), (dice, iou, precision, recall, specificity, accuracy))
HAND_CASES = {
    "partial_overlap": (
        _cube([0, 1, 1, 1, 1, 0, 0, 0]),
        _cube([1, 1, 1, 0, 0, 0, 0, 0]),
        (2, 2, 1, 3),
        (
            Fraction(4, 7),
            Fraction(2, 5),
            Fraction(2, 4),
            Fraction(2, 3),
            Fraction(3, 5),
            Fraction(5, 8),
        ),
    ),
    "empty_empty": (_cube([0] * 8), _cube([0] * 8), (0, 0, 0, 8), (1, 1, 1, 1, 1, 1)),
    "empty_pred": (
        _cube([0] * 8),
        _cube([1, 1, 1, 0, 0, 0, 0, 0]),
        (0, 0, 3, 5),
        (0, 0, 0, 0, 1, Fraction(5, 8)),
    ),
    "empty_truth": (
        _cube([0, 0, 0, 0, 0, 0, 1, 1]),
        _cube([0] * 8),
        (0, 2, 0, 6),
        (0, 0, 0, 0, Fraction(6, 8), Fraction(6, 8)),
    ),
    "all_lesion_both": (_cube([1] * 8), _cube([1] * 8), (8, 0, 0, 0), (1, 1, 1, 1, 1, 1)),
    "all_lesion_truth_partial_pred": (
        _cube([1, 1, 1, 1, 1, 0, 0, 0]),
        _cube([1] * 8),
        (5, 0, 3, 0),
        (Fraction(10, 13), Fraction(5, 8), 1, Fraction(5, 8), 0, Fraction(5, 8)),
    ),
    "disjoint": (
        _cube([1, 1, 0, 0, 0, 0, 0, 0]),
        _cube([0, 0, 0, 0, 0, 0, 1, 0]),
        (0, 2, 1, 5),
        (0, 0, 0, 0, Fraction(5, 7), Fraction(5, 8)),
    ),
}


@pytest.mark.parametrize(("pred", "truth", "counts", "ratios"), HAND_CASES.values(), ids=HAND_CASES)
def test_hand_counted_cases(pred, truth, counts, ratios):
    got_counts = confusion_counts(pred, truth)
    assert got_counts == dict(zip(("tp", "fp", "fn", "tn"), counts, strict=True))
    assert all(type(v) is int for v in got_counts.values())
    got_ratios = ratios_from_counts(**got_counts)
    assert list(got_ratios) == list(RATIO_NAMES)
    for name, expected in zip(RATIO_NAMES, ratios, strict=True):
        assert type(got_ratios[name]) is float
        assert got_ratios[name] == pytest.approx(float(expected), abs=1e-15), name


def test_specificity_undefined_follows_opposite_error():
    assert ratios_from_counts(tp=0, fp=0, fn=0, tn=0) == dict.fromkeys(RATIO_NAMES, 1.0)
    assert ratios_from_counts(tp=3, fp=0, fn=0, tn=0)["specificity"] == 1.0
    assert ratios_from_counts(tp=3, fp=0, fn=1, tn=0)["specificity"] == 0.0


def test_values_above_zero_are_lesion():
    labels = np.array([[[0, 2], [-1, 0.4]], [[3, 0], [0, -5]]])
    truth = np.array([[[0, 1], [1, 1]], [[0, 0], [0, 0]]], dtype=bool)
    assert confusion_counts(labels, truth) == {"tp": 2, "fp": 1, "fn": 1, "tn": 4}
    assert confusion_counts(labels > 0, truth) == confusion_counts(labels, truth)


@pytest.mark.parametrize(
    "function",
    [confusion_counts, lesion_detection, lambda p, t: surface_distances_mm(p, t, (1, 1, 1))],
)
def test_shape_mismatch_names_both_shapes(function):
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 4, 3\)"):
        function(np.zeros((2, 3, 4)), np.zeros((2, 4, 3)))


def test_bad_spacing_raises():
    mask = np.ones((2, 2, 2), dtype=bool)
    with pytest.raises(ValueError, match="spacing_mm"):
        surface_distances_mm(mask, mask, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing_mm"):
        evaluate(mask, mask, (1.0, 0.0, 1.0))


# --- surface distances, hand cases --------------------------------------------------------


@pytest.mark.parametrize(
    ("axis", "expected_mm"),
    [(0, 6.0), (1, 3.0), (2, 3.0)],
)
def test_single_voxels_three_apart(axis, expected_mm):
    pred = np.zeros((7, 7, 7), dtype=bool)
    truth = np.zeros_like(pred)
    pred[2, 2, 2] = True
    index = [2, 2, 2]
    index[axis] += 3
    truth[tuple(index)] = True
    got = surface_distances_mm(pred, truth, (2.0, 1.0, 1.0))
    assert got == {"hd95_mm": expected_mm, "assd_mm": expected_mm}


@pytest.mark.parametrize("shift_voxels", [1, 2, 3, 5])
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("spacing_mm", [(2.0, 1.0, 1.0), (0.5, 1.5, 3.0)])
def test_two_voxel_cubes_shifted(shift_voxels, axis, spacing_mm):
    # Every voxel of a 2×2×2 cube is surface; per direction, half the voxels lie
    # (k-1) voxels and half k voxels from the other cube along the shift axis.
    pred = np.zeros((12, 12, 12), dtype=bool)
    pred[3:5, 3:5, 3:5] = True
    truth = np.roll(pred, shift_voxels, axis=axis)
    got = surface_distances_mm(pred, truth, spacing_mm)
    step_mm = spacing_mm[axis]
    assert got["hd95_mm"] == pytest.approx(shift_voxels * step_mm)
    assert got["assd_mm"] == pytest.approx((shift_voxels - 0.5) * step_mm)


def test_full_array_against_centre_voxel():
    # Full 3×3×3 block: its surface is the 26 border voxels (border_value=0), the centre is
    # interior. Distances to the centre: 6 × 1, 12 × √2, 8 × √3; back: 1.
    pred = np.ones((3, 3, 3), dtype=bool)
    truth = np.zeros_like(pred)
    truth[1, 1, 1] = True
    got = surface_distances_mm(pred, truth, (1.0, 1.0, 1.0))
    assert got["hd95_mm"] == pytest.approx(math.sqrt(3))
    assert got["assd_mm"] == pytest.approx((6 + 12 * math.sqrt(2) + 8 * math.sqrt(3) + 1) / 27)


def test_hd95_is_max_of_directed_percentiles_not_union():
    # A line of 10 voxels against its first voxel: A→B = 0..9, B→A = 0.
    # MONAI rule: max(P95(0..9), P95(0)) = 8.55; the union's P95 would be 8.5.
    pred = np.zeros((20, 1, 1), dtype=bool)
    pred[:10] = True
    truth = np.zeros_like(pred)
    truth[0] = True
    got = surface_distances_mm(pred, truth, (1.0, 1.0, 1.0))
    assert got["hd95_mm"] == pytest.approx(8.55)
    assert got["assd_mm"] == pytest.approx(45 / 11)


def test_surface_empty_cases():
    empty = np.zeros((4, 4, 4), dtype=bool)
    lesion = empty.copy()
    lesion[1:3, 1:3, 1:3] = True
    assert surface_distances_mm(empty, empty, (1, 1, 1)) == {"hd95_mm": 0.0, "assd_mm": 0.0}
    for pred, truth in [(empty, lesion), (lesion, empty)]:
        got = surface_distances_mm(pred, truth, (1, 1, 1))
        assert math.isnan(got["hd95_mm"]) and math.isnan(got["assd_mm"])


def test_identical_masks_have_zero_distance():
    mask = np.zeros((9, 9, 9), dtype=bool)
    mask[2:7, 1:5, 3:9] = True
    assert surface_distances_mm(mask, mask, (1.2, 0.7, 3.0)) == {"hd95_mm": 0.0, "assd_mm": 0.0}


# --- independent implementations on random masks ------------------------------------------


def _random_mask(rng: np.random.Generator, shape: tuple[int, int, int], kind: str) -> np.ndarray:
    """Return a non-empty random mask: smooth blobs or scattered voxels."""
    if kind == "blobs":
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=1.5)
        mask = field > np.quantile(field, 0.8)
    else:
        mask = rng.random(shape) < 0.05
    mask.flat[rng.integers(mask.size)] = True
    return mask


def _brute_force_surface_mm(pred, truth, spacing_mm):
    """Return hd95_mm, assd_mm from explicit surface points and all pairwise distances."""

    def surface_points_mm(mask):
        padded = np.pad(mask, 1, constant_values=False)
        inner = (slice(1, -1),) * 3
        all_neighbours_in = np.ones_like(mask)
        for axis in range(3):
            for step in (-1, 1):
                shifted = list(inner)
                shifted[axis] = slice(1 + step, padded.shape[axis] - 1 + step)
                all_neighbours_in &= padded[tuple(shifted)]
        return np.argwhere(mask & ~all_neighbours_in) * np.asarray(spacing_mm)

    distances = cdist(surface_points_mm(pred), surface_points_mm(truth))
    pred_to_truth, truth_to_pred = distances.min(axis=1), distances.min(axis=0)
    hd95 = max(np.percentile(pred_to_truth, 95), np.percentile(truth_to_pred, 95))
    return hd95, np.concatenate([pred_to_truth, truth_to_pred]).mean()


RANDOM_CASES = [
    (0, (7, 9, 11), (1.0, 1.0, 1.0), "blobs"),
    (1, (12, 10, 8), (3.0, 0.8, 0.8), "blobs"),
    (2, (5, 16, 6), (0.5, 2.0, 1.3), "scattered"),
    (3, (10, 10, 10), (1.0, 1.0, 6.5), "scattered"),
    (4, (20, 14, 9), (0.9, 0.9, 5.0), "blobs"),
]


def _random_pair(seed, shape, kind):
    """Return a seeded random (pred, truth) pair of the given shape."""
    rng = np.random.default_rng(seed)
    return _random_mask(rng, shape, kind), _random_mask(rng, shape, kind)


@pytest.mark.parametrize(("seed", "shape", "spacing_mm", "kind"), RANDOM_CASES)
def test_surface_distances_match_brute_force(seed, shape, spacing_mm, kind):
    pred, truth = _random_pair(seed, shape, kind)
    # A small far-away lesion forces a non-trivial bounding-box crop.
    big = np.zeros((shape[0] + 15, shape[1] + 4, shape[2] + 7), dtype=bool)
    big_pred, big_truth = big.copy(), big.copy()
    big_pred[2 : 2 + shape[0], : shape[1], 3 : 3 + shape[2]] = pred
    big_truth[2 : 2 + shape[0], : shape[1], 3 : 3 + shape[2]] = truth
    for p, t in [(pred, truth), (big_pred, big_truth)]:
        got = surface_distances_mm(p, t, spacing_mm)
        hd95, assd = _brute_force_surface_mm(p, t, spacing_mm)
        assert got["hd95_mm"] == pytest.approx(hd95, rel=1e-12)
        assert got["assd_mm"] == pytest.approx(assd, rel=1e-12)


@pytest.mark.parametrize(("seed", "shape", "spacing_mm", "kind"), RANDOM_CASES)
def test_overlap_matches_simpleitk(seed, shape, spacing_mm, kind):
    pred, truth = _random_pair(seed, shape, kind)
    pred_image = sitk.GetImageFromArray(pred.astype(np.uint8))
    truth_image = sitk.GetImageFromArray(truth.astype(np.uint8))
    for image in (pred_image, truth_image):
        image.SetSpacing(spacing_mm[::-1])  # sitk arrays are z, y, x
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(pred_image, truth_image)
    got = ratios_from_counts(**confusion_counts(pred, truth))
    assert got["dice"] == pytest.approx(overlap.GetDiceCoefficient(), rel=1e-12)
    assert got["iou"] == pytest.approx(overlap.GetJaccardCoefficient(), rel=1e-12)
    assert got["precision"] == pytest.approx(1 - overlap.GetFalseDiscoveryRate(), rel=1e-12)
    assert got["specificity"] == pytest.approx(1 - overlap.GetFalsePositiveError(), rel=1e-12)
    assert got["recall"] == pytest.approx(1 - overlap.GetFalseNegativeError(), rel=1e-12)


@pytest.mark.parametrize(("seed", "shape", "spacing_mm", "kind"), RANDOM_CASES)
def test_lesions_match_scipy_label(seed, shape, spacing_mm, kind):
    pred, truth = _random_pair(seed, shape, kind)
    full = np.ones((3, 3, 3), dtype=int)
    truth_labels, n_true = ndimage.label(truth, structure=full)
    pred_labels, n_pred = ndimage.label(pred, structure=full)
    detected = sum(bool(pred[truth_labels == i].any()) for i in range(1, n_true + 1))
    false_alarms = sum(not truth[pred_labels == i].any() for i in range(1, n_pred + 1))
    missed = n_true - detected
    got = lesion_detection(pred, truth)
    assert got["lesions_true"] == n_true and got["lesions_pred"] == n_pred
    assert got["lesion_count_diff"] == abs(n_pred - n_true)
    assert got["lesion_f1"] == pytest.approx(
        2 * detected / (2 * detected + false_alarms + missed), rel=1e-12
    )


# --- lesion-wise hand cases ---------------------------------------------------------------


def test_lesion_detection_hand_case():
    truth = np.zeros((8, 8, 8), dtype=bool)
    truth[0, 0, 0] = truth[1, 1, 1] = True  # corner-touching: one lesion with 26-connectivity
    truth[5:7, 5:7, 5:7] = True  # second lesion, missed
    pred = np.zeros_like(truth)
    pred[1:3, 1:3, 1:3] = True  # overlaps the first lesion at (1, 1, 1): detected
    pred[0, 6, 0] = True  # no overlap: false positive
    pred[6, 0, 6] = True  # no overlap: false positive
    # lesion TP = 1, FN = 1, FP = 2 → F1 = 2 / (2 + 2 + 1)
    assert lesion_detection(pred, truth) == {
        "lesion_f1": 2 / 5,
        "lesion_count_diff": 1,
        "lesions_true": 2,
        "lesions_pred": 3,
    }


def test_lesion_detection_empty_cases():
    empty = np.zeros((4, 4, 4), dtype=bool)
    lesion = empty.copy()
    lesion[1, 1, 1] = True
    assert lesion_detection(empty, empty)["lesion_f1"] == 1.0
    assert lesion_detection(empty, lesion)["lesion_f1"] == 0.0
    assert lesion_detection(lesion, empty)["lesion_f1"] == 0.0
    assert lesion_detection(lesion, lesion)["lesion_f1"] == 1.0


# --- evaluate and pooled ratios -----------------------------------------------------------


def test_evaluate_columns_types_and_volumes():
    pred, truth = _random_pair(7, (10, 12, 14), "blobs")
    spacing_mm = (1.0, 0.5, 4.0)
    row = evaluate(pred, truth, spacing_mm)
    assert tuple(row) == METRIC_COLUMNS
    int_columns = {"tp", "fp", "fn", "tn", "lesion_count_diff", "lesions_true", "lesions_pred"}
    for name, value in row.items():
        assert type(value) is (int if name in int_columns else float), name
    voxel_ml = 2.0 / 1000
    assert row["volume_pred_ml"] == pytest.approx(pred.sum() * voxel_ml)
    assert row["volume_true_ml"] == pytest.approx(truth.sum() * voxel_ml)
    assert row["abs_volume_diff_ml"] == pytest.approx(
        abs(int(pred.sum()) - int(truth.sum())) * voxel_ml
    )
    assert row["dice"] == ratios_from_counts(**confusion_counts(pred, truth))["dice"]


def test_pooled_ratios_equal_ratios_of_concatenated_volumes():
    rng = np.random.default_rng(11)
    pairs = [
        _random_pair(seed, (6, 7, 8), kind) for seed, kind in [(20, "blobs"), (21, "scattered")]
    ]
    pairs.append((np.zeros((6, 7, 8), bool), np.zeros((6, 7, 8), bool)))
    pairs.append((np.zeros((6, 7, 8), bool), rng.random((6, 7, 8)) < 0.1))
    rows = [evaluate(pred, truth, (1.0, 1.0, 1.0)) for pred, truth in pairs]
    pred_all = np.concatenate([pred for pred, _ in pairs])
    truth_all = np.concatenate([truth for _, truth in pairs])
    tp = np.sum(pred_all & truth_all)
    fp = np.sum(pred_all & ~truth_all)
    fn = np.sum(~pred_all & truth_all)
    pooled = pooled_ratios(iter(rows))
    assert pooled == ratios_from_counts(**confusion_counts(pred_all, truth_all))
    assert pooled["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-12)
    assert pooled["dice"] != pytest.approx(np.mean([row["dice"] for row in rows]))
    with pytest.raises(ValueError, match="at least one row"):
        pooled_ratios([])


# --- the shared-truth path equals the previous implementation -----------------------------


def _previous_evaluate(pred, truth, spacing_mm):
    """The metrics as computed before the truth was shared (EDT on the union's box + 1)."""
    pred, truth = pred > 0, truth > 0
    counts = confusion_counts(pred, truth)
    row = {**counts, **ratios_from_counts(**counts)}
    if not (pred.any() or truth.any()):
        row.update(hd95_mm=0.0, assd_mm=0.0)
    elif pred.any() != truth.any():
        row.update(hd95_mm=math.nan, assd_mm=math.nan)
    else:
        nonzero = np.nonzero(pred | truth)
        box = tuple(
            slice(max(int(i.min()) - 1, 0), min(int(i.max()) + 2, n))
            for i, n in zip(nonzero, pred.shape, strict=True)
        )
        cross = ndimage.generate_binary_structure(3, 1)
        surfaces = [m[box] & ~ndimage.binary_erosion(m[box], cross) for m in (pred, truth)]
        p2t = ndimage.distance_transform_edt(~surfaces[1], sampling=spacing_mm)[surfaces[0]]
        t2p = ndimage.distance_transform_edt(~surfaces[0], sampling=spacing_mm)[surfaces[1]]
        row["hd95_mm"] = max(np.percentile(p2t, 95), np.percentile(t2p, 95))
        row["assd_mm"] = np.concatenate([p2t, t2p]).mean()
    truth_labels, n_true = cc3d.connected_components(truth, connectivity=26, return_N=True)
    pred_labels, n_pred = cc3d.connected_components(pred, connectivity=26, return_N=True)
    detected = int(np.count_nonzero(np.unique(truth_labels[pred])))
    hitting = int(np.count_nonzero(np.unique(pred_labels[truth])))
    missed, false_alarms = n_true - detected, n_pred - hitting
    row["lesion_f1"] = 2 * detected / max(2 * detected + false_alarms + missed, 1)
    if 2 * detected + false_alarms + missed == 0:
        row["lesion_f1"] = 1.0
    row.update(lesions_true=n_true, lesions_pred=n_pred, lesion_count_diff=abs(n_pred - n_true))
    return row


def _case_like_sources(seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A truth with two lesions in a larger volume and five predictions of various kinds."""
    rng = np.random.default_rng(seed)
    shape = (40, 36, 28)
    truth = np.zeros(shape, dtype=np.uint8)
    truth[5:12, 6:14, 4:9] = _random_mask(rng, (7, 8, 5), "blobs")
    truth[30:34, 25:30, 20:25] = 1
    near = np.roll(truth, 2, axis=0)
    scattered = (rng.random(shape) < 0.002).astype(np.uint8)
    far = np.zeros(shape, dtype=np.uint8)
    far[-3:, -2:, -4:] = 1  # touches the array border
    return {
        "same": truth.copy(),
        "near": near,
        "scattered": scattered,
        "far": far,
        "empty": np.zeros(shape, dtype=np.uint8),
    }, truth


def _nan_free(row: dict) -> dict:
    return {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


@pytest.mark.parametrize("way", ["tree", "edt", "cheaper"])
@pytest.mark.parametrize("spacing_mm", [(1.0, 1.0, 1.0), (0.9, 1.1, 3.3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_sources_equals_the_previous_metrics(seed, spacing_mm, way, monkeypatch):
    from stroke_ray import metrics

    if way != "cheaper":  # force one way of computing the surface distances
        monkeypatch.setattr(metrics, "_TREE_SECONDS_PER_POINT", 0.0 if way == "tree" else 1.0)
    preds, truth = _case_like_sources(seed)
    got = evaluate_sources(preds, truth, spacing_mm)
    assert list(got) == list(preds)
    for name, pred in preds.items():
        assert _nan_free(got[name]) == _nan_free(evaluate(pred, truth, spacing_mm))
        expected = _previous_evaluate(pred, truth, spacing_mm)
        for column, value in expected.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(got[name][column]), (name, column)
            else:
                assert got[name][column] == pytest.approx(value, rel=1e-12, abs=1e-12), (
                    name,
                    column,
                )


def test_evaluate_sources_of_an_empty_truth():
    preds, truth = _case_like_sources(3)
    got = evaluate_sources(preds, np.zeros_like(truth), (1.0, 1.0, 1.0))
    assert got["empty"]["hd95_mm"] == 0.0 and got["empty"]["lesion_f1"] == 1.0
    assert math.isnan(got["near"]["hd95_mm"]) and got["near"]["lesions_true"] == 0
