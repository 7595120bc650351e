"""Segmentation metrics for binary lesion masks: overlap, surface distance, volume, lesion-wise.

Inputs are arrays of equal shape; any value > 0 is lesion, everything else background.
``spacing_mm`` gives the voxel size in mm along each array axis, in array axis order.

Voxel-wise ratios, from the confusion counts TP, FP, FN, TN (N = TP + FP + FN + TN):

- Dice = 2TP / (2TP + FP + FN)
- IoU = TP / (TP + FP + FN)
- precision = TP / (TP + FP)
- recall = TP / (TP + FN)
- specificity = TN / (TN + FP)
- accuracy = (TP + TN) / N

Undefined ratios (denominator 0) never divide by zero. A ratio whose denominator is 0 is
1.0 when its "opposite" error is also 0 (prediction and truth agree that the class is
absent) and 0.0 otherwise:

=============  ==================  ==========================  ====================================
ratio          denominator 0 when  value                       meaning
=============  ==================  ==========================  ====================================
Dice, IoU      TP = FP = FN = 0    1.0                         both masks empty
precision      TP + FP = 0         1.0 if FN = 0 else 0.0      no prediction; 0.0 = lesion missed
recall         TP + FN = 0         1.0 if FP = 0 else 0.0      truth empty; 0.0 = false alarm
specificity    TN + FP = 0         1.0 if FN = 0 else 0.0      truth all lesion; 0.0 = FN > 0
accuracy       N = 0               1.0                         zero-size arrays
=============  ==================  ==========================  ====================================

Surface distances (MONAI ``compute_hausdorff_distance(percentile=95, directed=False)`` and
``compute_average_surface_distance(symmetric=True)`` conventions):

- The surface of a mask is its voxels with at least one 6-connected neighbour outside the
  mask: ``mask & ~binary_erosion(mask, 3D cross, border_value=0)``, so mask voxels on the
  array border are surface.
- The directed distances A→B are, for every surface voxel of A, the Euclidean distance in mm
  to the nearest surface voxel of B (``distance_transform_edt(~surface_B, sampling=spacing_mm)``
  at A's surface voxels, inside the bounding box of both surfaces). Where the surfaces are
  small against that box (a lesion and a few scattered voxels far apart), the same distances
  come from a nearest-neighbour query in a k-d tree of B's surface voxel centres in mm
  (``scipy.spatial.cKDTree``), whose cost grows with the surfaces instead of the box.
- hd95_mm = max(P95(A→B), P95(B→A)), the larger of the two directed 95th percentiles
  (numpy ``method="linear"``), which is MONAI's rule; not the percentile of the union.
- assd_mm = mean of the concatenation of A→B and B→A (each surface voxel weighs the same).
- Both masks empty: hd95_mm = assd_mm = 0.0. Exactly one mask empty: both NaN (undefined).
- Each surface is found inside its mask's bounding box plus a 1-voxel margin, which gives the
  same surface as the full array.

Volumes: volume_ml = voxel count × prod(spacing_mm) / 1000.

Lesion-wise (ISLES'22 rules): lesions are connected components with 26-connectivity
(``cc3d.connected_components(mask, connectivity=26)``). A truth lesion overlapping the
prediction by at least one voxel is detected (lesion TP), otherwise missed (lesion FN); a
predicted component overlapping no truth voxel is a lesion FP.
lesion_f1 = 2TP / (2TP + FP + FN), 1.0 when neither mask has a lesion;
lesion_count_diff = |lesions_pred - lesions_true|.

Several predictions against one truth (the planes and the fused masks of a case):
:func:`evaluate_sources` computes the truth's part once (its surface and k-d tree, its
lesions) and gives for each prediction what :func:`evaluate` gives.

Cohort figures: ``pooled_ratios`` sums TP/FP/FN/TN over cases, then applies the ratios above.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = [
    "METRIC_COLUMNS",
    "bounding_box",
    "confusion_counts",
    "evaluate",
    "evaluate_sources",
    "lesion_detection",
    "pooled_ratios",
    "ratios_from_counts",
    "surface_distances_mm",
]

METRIC_COLUMNS: tuple[str, ...] = (
    "tp",
    "fp",
    "fn",
    "tn",
    "dice",
    "iou",
    "precision",
    "recall",
    "specificity",
    "accuracy",
    "hd95_mm",
    "assd_mm",
    "volume_pred_ml",
    "volume_true_ml",
    "abs_volume_diff_ml",
    "lesion_f1",
    "lesion_count_diff",
    "lesions_true",
    "lesions_pred",
)

_CROSS_3D = ndimage.generate_binary_structure(3, 1)


def _as_mask(values: np.ndarray) -> np.ndarray:
    """Return a bool lesion mask (> 0) of ``values``, without copying bool input."""
    values = np.asarray(values)
    return values if values.dtype == bool else values > 0


def _mask_pair(
    pred: np.ndarray, truth: np.ndarray, *, volumetric: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Return bool masks of ``pred`` and ``truth``; ValueError on shape mismatch (or not 3D)."""
    pred_mask, truth_mask = _as_mask(pred), _as_mask(truth)
    if pred_mask.shape != truth_mask.shape:
        raise ValueError(
            f"pred shape {pred_mask.shape} does not match truth shape {truth_mask.shape}"
        )
    if volumetric and pred_mask.ndim != 3:
        raise ValueError(f"expected 3D masks, got shape {pred_mask.shape}")
    return pred_mask, truth_mask


def _spacing(spacing_mm: tuple[float, float, float]) -> tuple[float, float, float]:
    """Return ``spacing_mm`` as three positive floats; ValueError otherwise."""
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be three positive numbers, got {spacing_mm!r}")
    return spacing


def _ratio(numerator: int, denominator: int, opposite_error: int) -> float:
    """Return numerator/denominator, or 1.0/0.0 when the denominator is 0 (see module table)."""
    if denominator == 0:
        return 1.0 if opposite_error == 0 else 0.0
    return numerator / denominator


def confusion_counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """Return voxel counts tp, fp, fn, tn of ``pred`` against ``truth`` as Python ints."""
    pred_mask, truth_mask = _mask_pair(pred, truth)
    tp = int(np.count_nonzero(pred_mask & truth_mask))
    fp = int(np.count_nonzero(pred_mask)) - tp
    fn = int(np.count_nonzero(truth_mask)) - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(pred_mask.size) - tp - fp - fn}


def ratios_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """Return dice, iou, precision, recall, specificity, accuracy from confusion counts."""
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, fp + fn),
        "iou": _ratio(tp, tp + fp + fn, fp + fn),
        "precision": _ratio(tp, tp + fp, fn),
        "recall": _ratio(tp, tp + fn, fp),
        "specificity": _ratio(tn, tn + fp, fn),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn, 0),
    }


def _surface(mask: np.ndarray) -> np.ndarray:
    """Return the mask voxels with a 6-connected neighbour outside the mask or the array."""
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS_3D, border_value=0)


def bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """The mask's bounding box plus ``margin`` voxels (clipped to the array); None if empty."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=others))
        if present.size == 0:
            return None
        stop = min(int(present[-1]) + 1 + margin, mask.shape[axis])
        box.append(slice(max(int(present[0]) - margin, 0), stop))
    return tuple(box)


@dataclass
class _Lesions:
    """A mask seen once: its voxel count, box, surface points in mm and lesions (in the box)."""

    voxels: int
    box: tuple[slice, ...] | None
    surface: np.ndarray  # (n, 3) surface voxel indices in the array, C order
    spacing: tuple[float, float, float]
    labels: np.ndarray | None  # 26-connected components inside ``box``
    count: int
    _tree: cKDTree | None = None

    @classmethod
    def of(cls, mask: np.ndarray, spacing: tuple[float, float, float]) -> _Lesions:
        """Everything the metrics need from one bool mask."""
        box = bounding_box(mask)
        if box is None:
            return cls(0, None, np.zeros((0, 3), dtype=np.intp), spacing, None, 0)
        inside = mask[box]
        start = np.array([part.start for part in box])
        surface = np.argwhere(_surface(inside)) + start
        labels, count = cc3d.connected_components(inside, connectivity=26, return_N=True)
        return cls(int(np.count_nonzero(inside)), box, surface, spacing, labels, int(count))

    @property
    def surface_mm(self) -> np.ndarray:
        """Surface voxel centres in mm."""
        return self.surface * np.asarray(self.spacing)

    @property
    def tree(self) -> cKDTree:
        """A k-d tree of the surface points in mm (built once)."""
        if self._tree is None:
            self._tree = cKDTree(self.surface_mm)
        return self._tree

    def window(self, other: _Lesions) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
        """Where the two boxes overlap, in this box's and the other box's coordinates."""
        if self.box is None or other.box is None:
            return None
        mine, theirs = [], []
        for a, b in zip(self.box, other.box, strict=True):
            start, stop = max(a.start, b.start), min(a.stop, b.stop)
            if start >= stop:
                return None
            mine.append(slice(start - a.start, stop - a.start))
            theirs.append(slice(start - b.start, stop - b.start))
        return tuple(mine), tuple(theirs)


# Seconds per surface point of a k-d tree query and per box voxel of the two EDTs (measured,
# 2-core EPYC): the cheaper way is taken; both give the same distances.
_TREE_SECONDS_PER_POINT = 0.9e-6
_EDT_SECONDS_PER_VOXEL = 1.6e-7


def _directed_by_edt(pred: _Lesions, truth: _Lesions) -> tuple[np.ndarray, np.ndarray]:
    """Both directed distances from two EDTs inside the box of both surfaces."""
    points = np.concatenate([pred.surface, truth.surface])
    start, stop = points.min(axis=0), points.max(axis=0) + 1
    surfaces = []
    for lesions in (pred, truth):
        surface = np.zeros(tuple(stop - start), dtype=bool)
        surface[tuple((lesions.surface - start).T)] = True
        surfaces.append(surface)
    pred_surface, truth_surface = surfaces
    spacing = pred.spacing
    pred_to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)[pred_surface]
    truth_to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[truth_surface]
    return pred_to_truth, truth_to_pred


def _directed_distances(pred: _Lesions, truth: _Lesions) -> tuple[np.ndarray, np.ndarray]:
    """(pred → truth, truth → pred) surface distances in mm, by the cheaper of tree and EDT."""
    points = np.concatenate([pred.surface, truth.surface])
    box_voxels = float(np.prod(points.max(axis=0) - points.min(axis=0) + 1))
    if len(points) * _TREE_SECONDS_PER_POINT > box_voxels * _EDT_SECONDS_PER_VOXEL:
        return _directed_by_edt(pred, truth)
    return truth.tree.query(pred.surface_mm)[0], pred.tree.query(truth.surface_mm)[0]


def _surface_metrics(pred: _Lesions, truth: _Lesions) -> dict[str, float]:
    if not (pred.voxels or truth.voxels):
        return {"hd95_mm": 0.0, "assd_mm": 0.0}
    if not (pred.voxels and truth.voxels):
        return {"hd95_mm": float("nan"), "assd_mm": float("nan")}
    pred_to_truth, truth_to_pred = _directed_distances(pred, truth)
    hd95 = max(
        np.percentile(pred_to_truth, 95, method="linear"),
        np.percentile(truth_to_pred, 95, method="linear"),
    )
    assd = np.concatenate([pred_to_truth, truth_to_pred]).mean()
    return {"hd95_mm": float(hd95), "assd_mm": float(assd)}


def _hits(labels: np.ndarray | None, other: np.ndarray | None) -> int:
    """How many distinct nonzero labels of ``labels`` have a voxel where ``other`` is set."""
    if labels is None or other is None:
        return 0
    return int(np.count_nonzero(np.unique(labels[other])))


def _lesion_metrics(pred: _Lesions, truth: _Lesions) -> dict[str, float | int]:
    overlap = truth.window(pred)
    detected = pred_hitting_truth = 0
    if overlap is not None:
        in_truth, in_pred = overlap
        truth_labels, pred_labels = truth.labels[in_truth], pred.labels[in_pred]
        detected = _hits(truth_labels, pred_labels > 0)
        pred_hitting_truth = _hits(pred_labels, truth_labels > 0)
    missed = truth.count - detected
    false_alarms = pred.count - pred_hitting_truth
    return {
        "lesion_f1": _ratio(2 * detected, 2 * detected + false_alarms + missed, 0),
        "lesion_count_diff": abs(pred.count - truth.count),
        "lesions_true": truth.count,
        "lesions_pred": pred.count,
    }


def _true_positives(pred_mask: np.ndarray, truth: _Lesions) -> int:
    if truth.box is None:
        return 0
    return int(np.count_nonzero(pred_mask[truth.box] & (truth.labels > 0)))


def surface_distances_mm(
    pred: np.ndarray, truth: np.ndarray, spacing_mm: tuple[float, float, float]
) -> dict[str, float]:
    """Return hd95_mm and assd_mm between the surfaces of ``pred`` and ``truth``."""
    pred_mask, truth_mask = _mask_pair(pred, truth, volumetric=True)
    spacing = _spacing(spacing_mm)
    return _surface_metrics(_Lesions.of(pred_mask, spacing), _Lesions.of(truth_mask, spacing))


def lesion_detection(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """Return lesion_f1, lesion_count_diff, lesions_true, lesions_pred (26-connected lesions)."""
    pred_mask, truth_mask = _mask_pair(pred, truth, volumetric=True)
    unit = (1.0, 1.0, 1.0)
    return _lesion_metrics(_Lesions.of(pred_mask, unit), _Lesions.of(truth_mask, unit))


def _evaluate_one(
    pred_mask: np.ndarray, truth: _Lesions, spacing: tuple[float, float, float]
) -> dict[str, float | int]:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    pred = _Lesions.of(pred_mask, spacing)
    tp = _true_positives(pred_mask, truth)
    fp, fn = pred.voxels - tp, truth.voxels - tp
    counts = {"tp": tp, "fp": fp, "fn": fn, "tn": int(pred_mask.size) - tp - fp - fn}
    metrics: dict[str, float | int] = {
        **counts,
        **ratios_from_counts(**counts),
        **_surface_metrics(pred, truth),
        "volume_pred_ml": (tp + fp) * voxel_ml,
        "volume_true_ml": (tp + fn) * voxel_ml,
        "abs_volume_diff_ml": abs(fp - fn) * voxel_ml,
        **_lesion_metrics(pred, truth),
    }
    return {name: metrics[name] for name in METRIC_COLUMNS}


def evaluate_sources(
    preds: Mapping[str, np.ndarray], truth: np.ndarray, spacing_mm: tuple[float, float, float]
) -> dict[str, dict[str, float | int]]:
    """:func:`evaluate` of each prediction against one truth, the truth's part done once."""
    truth_mask = _as_mask(truth)
    spacing = _spacing(spacing_mm)
    shared: _Lesions | None = None
    results = {}
    for name, pred in preds.items():
        pred_mask, truth_mask = _mask_pair(pred, truth_mask, volumetric=True)
        if shared is None:
            shared = _Lesions.of(truth_mask, spacing)
        results[name] = _evaluate_one(pred_mask, shared, spacing)
    return results


def evaluate(
    pred: np.ndarray, truth: np.ndarray, spacing_mm: tuple[float, float, float]
) -> dict[str, float | int]:
    """Return every metric of METRIC_COLUMNS for one case, keyed in that order."""
    return evaluate_sources({"pred": pred}, truth, spacing_mm)["pred"]


def pooled_ratios(rows: Iterable[Mapping]) -> dict[str, float]:
    """Return the ratios of the tp/fp/fn/tn counts summed over ``rows`` (one row per case)."""
    totals = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    n_rows = 0
    for row in rows:
        for name in totals:
            totals[name] += int(row[name])
        n_rows += 1
    if n_rows == 0:
        raise ValueError("pooled_ratios needs at least one row")
    return ratios_from_counts(**totals)
