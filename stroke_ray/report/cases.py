"""The per-case part of the report: QC scatter, sortable case table, case pictures.

Case pictures read each case with :func:`stroke_ray.volumes.read_case` (the run's sequences)
and its fused mask, reorient both to RAS with :func:`stroke_ray.preprocess.to_canonical` so
every case is the same way up, and draw the reference sequence and one more (DWI, else FLAIR,
ADC, T2, T1, else the first other) in three planes with the truth and prediction outlined.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from stroke_ray.cohort import Case, load_cohort
from stroke_ray.config import PLANES
from stroke_ray.io import StorageOptions, read_image
from stroke_ray.outputs import fused_mask_uri
from stroke_ray.preprocess import ras_spacing, to_canonical
from stroke_ray.qc import dice_agreement_correlation, qc_points
from stroke_ray.report import figures
from stroke_ray.report import html as h
from stroke_ray.volumes import CaseVolumes, Inputs, read_case

__all__ = ["ras_views", "shown_sequences", "case_sections"]

logger = logging.getLogger(__name__)

_SECOND_CHOICE = ("dwi", "flair", "adc", "t2", "t1")  # shown beside the reference


@dataclass(frozen=True)
class _Folder:
    """A segmentation folder: where, what its run read, how its masks are laid out."""

    out: str
    inputs: Inputs
    layout: str


def shown_sequences(sequences: tuple[str, ...], reference: str) -> tuple[str, ...]:
    """The reference and up to one more of ``sequences`` that a case picture shows."""
    others = [name for name in sequences if name != reference]
    preferred = [name for name in _SECOND_CHOICE if name in others] + others
    return (reference, *preferred[:1])


def ras_views(
    volumes: CaseVolumes, prediction: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray, tuple[float, float, float]]:
    """The shown sequences (:func:`shown_sequences`), truth and prediction reoriented to RAS,
    with the RAS voxel size in mm."""
    affine = volumes.affine
    shown = shown_sequences(volumes.sequences, volumes.reference)
    channels = [volumes.sequences.index(name) for name in shown]
    images = to_canonical(volumes.images[channels], affine)
    truth = None if volumes.label is None else to_canonical(volumes.label, affine)
    return (
        {name.upper(): image for name, image in zip(shown, images, strict=True)},
        truth,
        to_canonical(prediction, affine),
        ras_spacing(affine),
    )


def _ranked_cases(metrics: pd.DataFrame) -> pd.DataFrame:
    """Fused rows: errors first, then worst Dice first, unlabelled last."""
    fused = metrics[metrics["source"] == "fused"].copy()
    fused["_error"] = fused["status"] != "error"
    return fused.sort_values(["_error", "dice", "case_id"], na_position="last").drop(
        columns="_error"
    )


def _text(value: Any) -> str | None:
    """A metrics cell as text; null (None or NaN) as None."""
    return value if isinstance(value, str) else None


def _picture(case: Case, row: dict[str, Any], seg: _Folder, options: StorageOptions) -> bytes:
    volumes = read_case(case, options, inputs=seg.inputs)
    uri = fused_mask_uri(
        seg.out, case.case_id, layout=seg.layout, subject=_text(row.get("subject")),
        session=_text(row.get("session")), reference=seg.inputs.reference,
    )  # fmt: skip
    mask = np.asanyarray(read_image(uri, options).dataobj)
    if mask.shape != volumes.images.shape[1:]:
        raise ValueError(f"mask shape {mask.shape} != image shape {volumes.images.shape[1:]}")
    images, truth, prediction, spacing = ras_views(volumes, (mask > 0).astype(np.uint8))
    title = f"{case.case_id}: fused Dice {h.number(row['dice'])}"
    return figures.case_figure(images, truth, prediction, spacing, title)


def _picture_caption(row: dict[str, Any], inputs: Inputs) -> str:
    flag = f", QC flag {row['qc_flag']}" if isinstance(row.get("qc_flag"), str) else ""
    return (
        f"{row['case_id']} ({row['status']}): fused Dice {h.number(row['dice'])}, "
        f"volume {h.number(row['volume_pred_ml'], 2)} ml predicted / "
        f"{h.number(row['volume_true_ml'], 2)} ml true, plane agreement "
        f"{h.number(row['agreement_dice'])}{flag}. Rows "
        + " and ".join(name.upper() for name in shown_sequences(inputs.sequences, inputs.reference))
        + "; slices through the "
        "voxel of truth ∪ prediction nearest its centre of mass; green outline ground truth, magenta prediction; "
        f"{figures.CONVENTION}; pixels drawn to scale from the voxel spacing."
    )


def _case_pictures(
    seg: _Folder, metrics: pd.DataFrame, cohort: str | None, max_cases: int, options: StorageOptions
) -> tuple[list[str], set[str]]:
    """Figures of the worst cases (up to ``max_cases``) and the ids that got one."""
    ranked = _ranked_cases(metrics)
    rows = ranked[ranked["status"] != "error"].head(max_cases).to_dict("records")
    if not rows:
        return [], set()
    if not cohort:
        return [h.note("segment.json names no cohort: no case pictures")], set()
    cases = {case.case_id: case for case in load_cohort(cohort, options)}
    parts, pictured = [], set()
    for row in rows:
        case_id = row["case_id"]
        try:
            png = _picture(cases[case_id], row, seg, options)
        except Exception as err:  # noqa: BLE001 - one unreadable case must not stop the report
            logger.warning("no picture of case %s: %s", case_id, err)
            parts.append(h.note(f"{case_id}: no picture ({type(err).__name__}: {err})"))
            continue
        caption = _picture_caption(row, seg.inputs)
        parts.append(h.figure(png, f"case {case_id}", caption, f"case-{case_id}"))
        pictured.add(case_id)
    logger.info("drew %d case pictures", len(pictured))
    return parts, pictured


def _case_table(metrics: pd.DataFrame, pictured: set[str]) -> str:
    ranked = _ranked_cases(metrics)
    plane_rows = metrics[metrics["source"].isin(PLANES)]
    plane_dice = plane_rows.set_index(["case_id", "source"])["dice"].to_dict()
    header = ["case", "status", "fused Dice", *[f"{p} Dice" for p in PLANES], "HD95 mm"]
    header += ["volume pred ml", "volume true ml", "QC score", "unanimous", "QC flag", "error"]
    rows = []
    for row in ranked.to_dict("records"):
        case_id = row["case_id"]
        rows.append(
            [
                h.link(case_id, f"case-{case_id}") if case_id in pictured else case_id,
                row["status"],
                h.Number(row["dice"]),
                *[h.Number(plane_dice.get((case_id, plane))) for plane in PLANES],
                h.Number(row["hd95_mm"], 1),
                h.Number(row["volume_pred_ml"], 2),
                h.Number(row["volume_true_ml"], 2),
                h.Number(row["agreement_dice"]),
                h.Number(row["unanimous_fraction"]),
                row["qc_flag"] if isinstance(row["qc_flag"], str) else None,
                row["error"] if isinstance(row["error"], str) else None,
            ]
        )
    classes = ["error" if status == "error" else "" for status in ranked["status"]]
    return h.table(header, rows, sortable=True, row_classes=classes)


def _qc_section(metrics: pd.DataFrame) -> str:
    points = qc_points(metrics)
    if len(points) < 3:
        return h.section("QC", h.note(f"{len(points)} labelled cases: the scatter needs 3"))
    r = dice_agreement_correlation(metrics)
    text = "undefined (constant values)" if r is None else f"{r:.3f}"
    png = figures.qc_scatter(points, f"Pearson r = {text}")
    caption = (
        f"Fused Dice against the QC score (mean pairwise Dice of the three plane masks) for "
        f"{len(points)} labelled cases; Pearson r = {text}. Red points carry a QC flag."
    )
    return h.section("QC: plane agreement vs Dice", h.figure(png, "QC scatter", caption))


def case_sections(
    out: str,
    metrics: pd.DataFrame,
    cohort: str | None,
    *,
    inputs: Inputs,
    layout: str,
    max_cases: int,
    options: StorageOptions,
    label: str,
) -> str:
    """QC scatter, sortable case table and case pictures of one segmentation folder (whose
    run read ``inputs`` and wrote masks in ``layout``)."""
    seg = _Folder(out, inputs, layout)
    pictures, pictured = _case_pictures(seg, metrics, cohort, max_cases, options)
    table = _case_table(metrics, pictured)
    intro = h.note(
        f"{label}. Click a column header to sort; case ids link to their picture "
        f"(the {max_cases} worst by fused Dice at most). QC score = plane agreement."
    )
    return "".join(
        [
            _qc_section(metrics),
            h.section("Cases", intro, table),
            h.section("Case pictures", *(pictures or [h.note("no case pictures")])),
        ]
    )
