"""What one case's plane predictions become: masks on the source grid and metric rows.

Pure functions over arrays (no Ray, no files). The write stage of ``segment`` calls
:func:`case_masks` (probabilities → masks) and :func:`case_rows` (masks + label → rows),
then writes what they return.

- Every plane's slice probabilities are restacked in slice order onto the network grid.
  Where that grid was resampled, the probabilities are resampled back (linearly) onto the
  source voxel size first, so that the votes below happen on the source grid.
- Each plane votes lesion where its probability is ≥ 0.5; the planes are fused
  (:mod:`stroke_ray.fusion`) and every mask is mapped back to the source voxel grid. Fused
  lesions smaller than ``min_lesion_ml`` are removed there.
- Rows: one per source (each plane, ``fused`` = the job's fusion, ``fused_<mode>`` for extra
  modes) with every metric of :mod:`stroke_ray.metrics`; the ``fused`` row also carries
  the QC columns of :mod:`stroke_ray.qc`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stroke_ray.fusion import (
    THRESHOLD,
    fuse,
    probability_spread,
    remove_small_lesions,
    vote_count,
)
from stroke_ray.inference import PlanePrediction, restack
from stroke_ray.metrics import evaluate_sources
from stroke_ray.preprocess import Geometry, restore, to_source_spacing
from stroke_ray.qc import agreement_scores, qc_flag

__all__ = ["FusionSettings", "CaseMasks", "case_masks", "case_rows", "error_row", "voxel_ml"]


@dataclass(frozen=True)
class FusionSettings:
    """How the planes of a case are fused."""

    fusion: str = "majority"
    plane_weights: Mapping[str, float] | None = None
    extra_fusions: tuple[str, ...] = ()
    save_planes: bool = False
    min_lesion_ml: float = 0.0  # fused lesions below this volume are removed


@dataclass
class CaseMasks:
    """A case's results on the source voxel grid."""

    masks: dict[str, np.ndarray]  # source → uint8 mask: planes, "fused", "fused_<mode>"
    votes: np.ndarray  # uint8, planes voting lesion per voxel
    plane_agreement: dict[str, float]  # agreement_dice, unanimous_fraction
    brain_voxels: int
    probability: np.ndarray | None = None  # mean plane probability (save_planes)
    spread: np.ndarray | None = None  # max − min plane probability (save_planes)


def voxel_ml(spacing_mm: tuple[float, float, float]) -> float:
    """Volume of one voxel in ml."""
    return float(np.prod(spacing_mm)) / 1000.0


def _kept_lesions(mask: np.ndarray, settings: FusionSettings, geometry: Geometry) -> np.ndarray:
    """A fused source-grid mask without lesions below ``settings.min_lesion_ml``."""
    return remove_small_lesions(mask, settings.min_lesion_ml, geometry.spacing_mm)


def case_masks(
    predictions: Mapping[str, PlanePrediction],
    brain: np.ndarray,
    geometry: Geometry,
    settings: FusionSettings,
) -> CaseMasks:
    """Restack, fuse and map back: every mask of a case in its source geometry."""
    probabilities = {
        plane: restack(prediction, brain.shape, plane) for plane, prediction in predictions.items()
    }
    if geometry.resampled:
        source = geometry
        probabilities = {p: to_source_spacing(v, source)[0] for p, v in probabilities.items()}
        brain_on_source, geometry = to_source_spacing(brain.astype(np.float32), source)
        brain = brain_on_source >= THRESHOLD
    votes = vote_count(probabilities)
    fused = fuse(probabilities, settings.fusion, settings.plane_weights)
    masks = {
        plane: restore((p >= THRESHOLD).astype(np.uint8), geometry)
        for plane, p in probabilities.items()
    }
    masks["fused"] = _kept_lesions(restore(fused, geometry), settings, geometry)
    for mode in settings.extra_fusions:
        extra = fuse(probabilities, mode, settings.plane_weights)
        masks[f"fused_{mode}"] = _kept_lesions(restore(extra, geometry), settings, geometry)
    result = CaseMasks(
        masks=masks,
        votes=restore(votes, geometry),
        plane_agreement=agreement_scores(probabilities, votes, fused),
        brain_voxels=int(brain.sum()),
    )
    if settings.save_planes:
        mean = sum(probabilities.values()) / len(probabilities)
        result.probability = restore(mean.astype(np.float32), geometry)
        result.spread = restore(probability_spread(probabilities), geometry)
    return result


def case_rows(
    case_id: str,
    result: CaseMasks,
    label: np.ndarray | None,
    spacing_mm: tuple[float, float, float],
    common: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """One metric row per source; the ``fused`` row carries the QC columns."""
    unit_ml = voxel_ml(spacing_mm)
    metrics = None if label is None else evaluate_sources(result.masks, label, spacing_mm)
    rows = []
    for source, mask in result.masks.items():
        row: dict[str, Any] = {**common, "case_id": case_id, "source": source}
        if source.startswith("fused_"):
            row["fusion"] = source.removeprefix("fused_")
        if metrics is None:
            row.update(status="unlabelled", volume_pred_ml=float(mask.sum()) * unit_ml)
        else:
            row.update(status="ok", **metrics[source])
        rows.append(row)
    fused = result.masks["fused"]
    flag = qc_flag(
        result.plane_agreement,
        volume_ml=float(fused.sum()) * unit_ml,
        brain_ml=result.brain_voxels * unit_ml,
        any_lesion=bool(result.votes.any()),
    )
    next(r for r in rows if r["source"] == "fused").update(result.plane_agreement, qc_flag=flag)
    return rows


def error_row(case_id: str, message: str, common: Mapping[str, Any]) -> dict[str, Any]:
    """The single row of a case that failed."""
    return {**common, "case_id": case_id, "source": "fused", "status": "error", "error": message}
