"""The fused validation of a finished run: its planes and votes on the validation cases, and the
minimum lesion size the vote should use.

After the three planes have trained, ``train`` segments the run's validation cases exactly as
``segment`` would (same preprocessing, restack, resampling back, fusion; the pure core of
:mod:`stroke_ray.case_outputs`) and scores every plane and fusion mode against the labels.
For each fusion mode it then tries the minimum lesion sizes of :data:`MIN_LESION_ML_CANDIDATES`
and suggests the one with the best mean of Dice and lesion-wise F1 over the validation cases
(the checkpoint score, applied to the fused volumes); a larger size must do strictly better
than every smaller one to be chosen, so without evidence the suggestion is 0 (keep every
lesion). ``run.json`` records the scores under ``validation`` and the suggestion under
``suggested_min_lesion_ml``; ``segment`` uses it when ``--min-lesion-ml`` is not given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stroke_ray.case_outputs import FusionSettings, case_masks
from stroke_ray.config import FUSION_MODES
from stroke_ray.fusion import remove_small_lesions
from stroke_ray.metrics import confusion_counts, lesion_detection, ratios_from_counts

__all__ = [
    "MIN_LESION_ML_CANDIDATES",
    "case_scores",
    "suggest_min_lesion_ml",
    "summarise_validation",
    "validate_run",
]

# ml; 0.01 ml is ~1 voxel at 2 mm, 0.5 ml a sphere of ~10 mm diameter
MIN_LESION_ML_CANDIDATES: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def _score(mask: np.ndarray, label: np.ndarray) -> dict[str, float]:
    dice = ratios_from_counts(**confusion_counts(mask, label))["dice"]
    lesion_f1 = float(lesion_detection(mask, label)["lesion_f1"])
    return {"dice": dice, "lesion_f1": lesion_f1, "score": (dice + lesion_f1) / 2}


def case_scores(
    masks: Mapping[str, np.ndarray],
    label: np.ndarray,
    spacing_mm: Sequence[float],
    candidates: Sequence[float] = MIN_LESION_ML_CANDIDATES,
) -> list[dict[str, Any]]:
    """Rows (source, min_lesion_ml, dice, lesion_f1, score) of one case: every plane as it is,
    every fused mask (``fused_<mode>``, unfiltered) at every candidate minimum size."""
    rows = []
    for source, mask in masks.items():
        sizes = candidates if source.startswith("fused_") else (0.0,)
        for size in sizes:
            kept = remove_small_lesions(mask, size, spacing_mm)
            rows.append({"source": source, "min_lesion_ml": float(size), **_score(kept, label)})
    return rows


def suggest_min_lesion_ml(rows: Sequence[Mapping[str, Any]], source: str) -> float:
    """The candidate size with the best mean score of ``source``; ties go to the smaller size."""
    by_size: dict[float, list[float]] = {}
    for row in rows:
        if row["source"] == source:
            by_size.setdefault(float(row["min_lesion_ml"]), []).append(float(row["score"]))
    best_size, best = 0.0, -1.0
    for size in sorted(by_size):
        mean = float(np.mean(by_size[size]))
        if mean > best + 1e-9:
            best_size, best = size, mean
    return best_size


def summarise_validation(rows: Sequence[Mapping[str, Any]], cases: int) -> dict[str, Any]:
    """run.json's ``validation`` (mean Dice, lesion F1 and score per source and size) and the
    suggested minimum lesion size per fusion mode."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["source"], float(row["min_lesion_ml"])), []).append(row)
    for (source, size), group in sorted(groups.items()):
        table.setdefault(source, {})[f"{size:g}"] = {
            key: float(np.mean([r[key] for r in group]))
            for key in ("dice", "lesion_f1", "score")
            if key in group[0]
        }
    suggested = {
        mode: suggest_min_lesion_ml(rows, f"fused_{mode}")
        for mode in FUSION_MODES
        if f"fused_{mode}" in table
    }
    return {"cases": cases, "sources": table, "suggested_min_lesion_ml": suggested}


def validate_run(
    run_dir: str,
    run: Mapping[str, Any],
    case_dicts: Sequence[Mapping[str, Any]],
    storage_options: Any = None,
    *,
    use_gpu: bool = False,
) -> dict[str, Any]:
    """Segment the validation cases with the run's models; return :func:`summarise_validation`."""
    import torch

    from stroke_ray.case import Case
    from stroke_ray.inference import predict_planes
    from stroke_ray.preprocess import prepare
    from stroke_ray.runs import load_plane_models, run_inputs
    from stroke_ray.volumes import CaseError, read_case

    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    models = load_plane_models(run, run_dir, device, storage_options)
    weights = {plane: float(values["val_dice"]) for plane, values in run["planes"].items()}
    modes = [mode for mode in FUSION_MODES if mode != "majority"]
    settings = FusionSettings(fusion="majority", plane_weights=weights, extra_fusions=tuple(modes))
    inputs = run_inputs(run)
    rows: list[dict[str, Any]] = []
    cases = 0
    for values in case_dicts:
        try:
            volumes = read_case(Case.from_dict(values), storage_options, inputs=inputs)
        except CaseError:
            continue
        prepared = prepare(volumes, run.get("spacing_mm"))
        predictions = predict_planes(models, prepared.image, prepared.brain, device=device)
        result = case_masks(predictions, prepared.brain, prepared.geometry, settings)
        masks = {
            ("fused_majority" if source == "fused" else source): mask
            for source, mask in result.masks.items()
        }
        rows.extend(case_scores(masks, volumes.label, volumes.spacing_mm))
        cases += 1
    return summarise_validation(rows, cases)
