"""The segmentation output folder and its metric tables.

```
OUT/
  masks/<case_id>.nii.gz          fused lesion mask, uint8 0/1, source image geometry
                                  (--layout bids: sub-X/ses-Y/…, see stroke_ray.derivatives)
  planes/<case_id>_<plane>.nii.gz per-plane masks            (--save-planes)
  probability/<case_id>.nii.gz    fused lesion probability   (--save-planes)
  qc/<case_id>_votes.nii.gz       planes voting lesion, 0–3  (always)
  cases/<case_id>.parquet         one finished case's metric rows (the resume marker)
  metrics.parquet                 every case's rows, rebuilt from cases/ at the end
  summary.json                    cohort summary (mean, median, pooled per source)
```
A case counts as finished when ``cases/<case_id>.parquet`` exists with status ``ok`` or
``unlabelled``: it is written last, atomically, after the case's images.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stroke_ray.config import FUSION_MODES, PLANES
from stroke_ray.derivatives import bids_mask_uri
from stroke_ray.io import StorageOptions, filesystem, join_uri, write_bytes_atomic, write_json
from stroke_ray.metrics import METRIC_COLUMNS, ratios_from_counts

__all__ = [
    "SOURCES",
    "STATUSES",
    "METRICS_SCHEMA",
    "mask_uri",
    "fused_mask_uri",
    "case_part_uri",
    "write_case_rows",
    "finished_cases",
    "consolidate",
    "summarise",
    "source_order",
    "source_summary",
    "grouped_summary",
]

SOURCES: tuple[str, ...] = ("axial", "coronal", "sagittal", "fused")
STATUSES: tuple[str, ...] = ("ok", "unlabelled", "error")
POOLED_RATIOS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "specificity")
_INT_COLUMNS = {"tp", "fp", "fn", "tn", "lesion_count_diff", "lesions_true", "lesions_pred"}
METRICS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("case_id", pa.string()),
        pa.field("subject", pa.string()),  # BIDS subject and session, null where none
        pa.field("session", pa.string()),
        pa.field("source", pa.string()),
        pa.field("fusion", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("mask_uri", pa.string()),
        pa.field("seconds", pa.float64()),
        *[
            pa.field(name, pa.int64() if name in _INT_COLUMNS else pa.float64())
            for name in METRIC_COLUMNS
        ],
        pa.field("agreement_dice", pa.float64()),
        pa.field("unanimous_fraction", pa.float64()),
        pa.field("qc_flag", pa.string()),
    ]
)


def mask_uri(out: str, case_id: str, kind: str = "masks", suffix: str = "") -> str:
    """Where an output image of a case goes."""
    return join_uri(out, kind, f"{case_id}{suffix}.nii.gz")


def fused_mask_uri(
    out: str,
    case_id: str,
    *,
    layout: str = "flat",
    subject: str | None = None,
    session: str | None = None,
    reference: str = "flair",
) -> str:
    """Where a case's fused mask goes: ``masks/<case_id>.nii.gz``, or its BIDS derivatives
    path (``--layout bids``; the datatype folder follows the run's reference sequence)."""
    if layout == "bids":
        return bids_mask_uri(out, case_id, subject, session, reference)
    return mask_uri(out, case_id)


def case_part_uri(out: str, case_id: str) -> str:
    """The per-case metrics part (also the case's 'finished' marker)."""
    return join_uri(out, "cases", f"{case_id}.parquet")


def _table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    columns = {field.name: [] for field in METRICS_SCHEMA}
    for row in rows:
        for name in columns:
            value = row.get(name)
            if isinstance(value, float) and math.isnan(value):
                value = None
            columns[name].append(value)
    return pa.table(columns, schema=METRICS_SCHEMA)


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def write_case_rows(
    rows: list[Mapping[str, Any]], out: str, case_id: str, options: StorageOptions = None
) -> None:
    """Atomically write one case's metric rows."""
    write_bytes_atomic(_parquet_bytes(_table(rows)), case_part_uri(out, case_id), options)


def _conformed(table: pa.Table) -> pa.Table:
    """A part in METRICS_SCHEMA; columns that older versions did not write are null."""
    columns = [
        table[field.name] if field.name in table.column_names else pa.nulls(len(table))
        for field in METRICS_SCHEMA
    ]
    return pa.table(columns, names=METRICS_SCHEMA.names).cast(METRICS_SCHEMA)


def _read_parts(out: str, options: StorageOptions) -> pa.Table:
    fs, path = filesystem(join_uri(out, "cases"), options)
    if not fs.exists(path):
        return METRICS_SCHEMA.empty_table()
    files = sorted(f for f in fs.ls(path, detail=False) if f.endswith(".parquet"))
    tables = []
    for file in files:
        with fs.open(file, "rb") as handle:
            tables.append(_conformed(pq.read_table(handle)))
    return pa.concat_tables(tables) if tables else METRICS_SCHEMA.empty_table()


def finished_cases(out: str, options: StorageOptions = None) -> set[str]:
    """Cases whose part file exists and is not an error (these are skipped on resume)."""
    table = _read_parts(out, options)
    frame = table.select(["case_id", "status"]).to_pandas()
    return set(frame.loc[frame["status"] != "error", "case_id"])


def source_order(sources: set[str]) -> list[str]:
    """Planes, then fused and fused_<mode> in FUSION_MODES order, then anything else."""
    order = [*PLANES, "fused", *[f"fused_{mode}" for mode in FUSION_MODES]]
    return [s for s in order if s in sources] + sorted(sources - set(order))


def grouped_summary(
    frame: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str] = ("dice",)
) -> pd.DataFrame:
    """Per group of labelled rows: cases, mean/sd/median and covered cases of each metric,
    the summed TP/FP/FN/TN and every ratio pooled from them.

    A metric that is undefined for a case (NaN: HD95 with one mask empty) is left out of its
    mean; ``<metric>_cases`` says how many cases the mean covers.
    """
    ok = frame[frame["status"] == "ok"]
    records = []
    for group, rows in ok.groupby(list(keys), sort=False):
        values = group if isinstance(group, tuple) else (group,)
        counts = {k: int(rows[k].sum()) for k in ("tp", "fp", "fn", "tn")}
        record: dict[str, Any] = {**dict(zip(keys, values, strict=True)), "cases": len(rows)}
        for metric in metrics:
            column = rows[metric].astype(float)
            record[f"{metric}_mean"] = float(column.mean())
            record[f"{metric}_sd"] = float(column.std(ddof=1)) if column.count() > 1 else 0.0
            record[f"{metric}_median"] = float(column.median())
            record[f"{metric}_cases"] = int(column.count())
        record.update(counts)
        record.update({f"{k}_pooled": v for k, v in ratios_from_counts(**counts).items()})
        records.append(record)
    table = pd.DataFrame(records)
    if table.empty or "source" not in keys:
        return table
    order = {source: i for i, source in enumerate(source_order(set(table["source"])))}
    return table.sort_values(
        list(keys), key=lambda c: c.map(order) if c.name == "source" else c, ignore_index=True
    )


def source_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per source: labelled cases, Dice mean/sd/median and ratios pooled from summed counts."""
    return grouped_summary(frame, ["source"])


def summarise(frame: pd.DataFrame) -> dict[str, Any]:
    """Cohort summary: case counts by status and, per source, mean/median/pooled Dice."""
    keys = (
        "dice_mean",
        "dice_median",
        "dice_pooled",
        "iou_pooled",
        "precision_pooled",
        "recall_pooled",
    )
    per_source = {
        row["source"]: {"cases": int(row["cases"]), **{key: float(row[key]) for key in keys}}
        for _, row in source_summary(frame).iterrows()
    }
    fused = frame[frame["source"] == "fused"]
    errors = fused[fused["status"] == "error"]
    return {
        "cases": int(fused["case_id"].nunique()),
        "status_counts": {s: int((fused["status"] == s).sum()) for s in STATUSES},
        "errors": dict(zip(errors["case_id"], errors["error"], strict=True)),
        "sources": per_source,
    }


def consolidate(
    out: str, options: StorageOptions = None, case_ids: Iterable[str] | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rebuild metrics.parquet and summary.json from the per-case parts (of ``case_ids``)."""
    table = _read_parts(out, options)
    if case_ids is not None:
        table = table.filter(pc.is_in(table["case_id"], value_set=pa.array(list(case_ids))))
    table = table.sort_by([("case_id", "ascending"), ("source", "ascending")])
    write_bytes_atomic(_parquet_bytes(table), join_uri(out, "metrics.parquet"), options)
    frame = table.to_pandas()
    summary = summarise(frame)
    write_json(summary, join_uri(out, "summary.json"), options)
    return frame, summary
