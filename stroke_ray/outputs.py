"""The segmentation output folder and its metric tables.

```
OUT/
  masks/<case_id>.nii.gz          fused lesion mask, uint8 0/1, source image geometry
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
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stroke_ray.fusion import FUSION_MODES
from stroke_ray.io import StorageOptions, join_uri, write_bytes_atomic
from stroke_ray.metrics import METRIC_COLUMNS, pooled_ratios
from stroke_ray.planes import PLANES
from stroke_ray.runs import write_json

__all__ = [
    "SOURCES",
    "STATUSES",
    "METRICS_SCHEMA",
    "mask_uri",
    "case_part_uri",
    "write_case_rows",
    "finished_cases",
    "consolidate",
    "summarise",
    "source_order",
    "source_summary",
]

SOURCES: tuple[str, ...] = ("axial", "coronal", "sagittal", "fused")
STATUSES: tuple[str, ...] = ("ok", "unlabelled", "error")
POOLED_RATIOS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "specificity")
_INT_COLUMNS = {"tp", "fp", "fn", "tn", "lesion_count_diff", "lesions_true", "lesions_pred"}
METRICS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("case_id", pa.string()),
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


def _read_parts(out: str, options: StorageOptions) -> pa.Table:
    fs, path = fsspec.core.url_to_fs(join_uri(out, "cases"), **dict(options or {}))
    if not fs.exists(path):
        return METRICS_SCHEMA.empty_table()
    files = sorted(f for f in fs.ls(path, detail=False) if f.endswith(".parquet"))
    tables = []
    for file in files:
        with fs.open(file, "rb") as handle:
            tables.append(pq.read_table(handle).cast(METRICS_SCHEMA))
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


def source_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per source: labelled cases, Dice mean/sd/median and ratios pooled from summed counts."""
    ok = frame[frame["status"] == "ok"]
    rows = []
    for source in source_order(set(ok["source"])):
        part = ok[ok["source"] == source]
        pooled = pooled_ratios(part[["tp", "fp", "fn", "tn"]].to_dict("records"))
        rows.append(
            {
                "source": source,
                "cases": len(part),
                "dice_mean": part["dice"].mean(),
                "dice_sd": part["dice"].std(),
                "dice_median": part["dice"].median(),
                **{f"{name}_pooled": pooled[name] for name in POOLED_RATIOS},
            }
        )
    return pd.DataFrame(rows)


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
