"""Tests for stroke_ray.outputs: grouped summaries (means over cases, ratios pooled from summed
counts), source order, the cohort summary and the per-case parts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stroke_ray.metrics import ratios_from_counts
from stroke_ray.outputs import (
    consolidate,
    finished_cases,
    grouped_summary,
    source_order,
    source_summary,
    summarise,
    write_case_rows,
)

NAN = float("nan")


def _row(case_id, source, tp, fp, fn, tn, dice, hd95=1.0, status="ok", weights="imagenet"):
    return {
        "case_id": case_id,
        "source": source,
        "status": status,
        "weights": weights,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "dice": dice,
        "hd95_mm": hd95,
    }


def _frame() -> pd.DataFrame:
    rows = [
        _row("a", "fused", 8, 2, 0, 90, 0.9, hd95=2.0),
        _row("b", "fused", 1, 0, 9, 90, 0.2, hd95=NAN),
        _row("c", "fused", 0, 0, 0, 100, 1.0, hd95=0.0),
        _row("a", "axial", 5, 5, 3, 87, 0.55),
        _row("b", "axial", 0, 1, 10, 89, 0.0, hd95=NAN),
        _row("c", "axial", 0, 0, 0, 100, 1.0),
        # neither unlabelled nor error rows count
        {"case_id": "d", "source": "fused", "status": "unlabelled", "volume_pred_ml": 3.0},
        {"case_id": "e", "source": "fused", "status": "error", "error": "case e: broken"},
    ]
    return pd.DataFrame(rows)


def test_grouped_summary_means_counts_and_pooled_ratios():
    frame = _frame()
    table = grouped_summary(frame, ["source"], ("dice", "hd95_mm")).set_index("source")
    assert list(table.index) == ["axial", "fused"]  # planes first, whatever the row order
    fused = table.loc["fused"]
    assert fused["cases"] == 3
    assert fused["dice_mean"] == pytest.approx(0.7)
    assert fused["dice_sd"] == pytest.approx(np.std([0.9, 0.2, 1.0], ddof=1))
    assert fused["dice_median"] == pytest.approx(0.9)
    assert fused["dice_cases"] == 3
    assert (fused["tp"], fused["fp"], fused["fn"], fused["tn"]) == (9, 2, 9, 280)
    pooled = ratios_from_counts(9, 2, 9, 280)
    assert fused["dice_pooled"] == pytest.approx(pooled["dice"]) == pytest.approx(18 / 29)
    assert fused["dice_pooled"] != pytest.approx(fused["dice_mean"])
    for ratio in ("iou", "precision", "recall", "specificity", "accuracy"):
        assert fused[f"{ratio}_pooled"] == pytest.approx(pooled[ratio]), ratio


def test_undefined_values_are_left_out_of_means_and_counted():
    table = grouped_summary(_frame(), ["source"], ("hd95_mm",)).set_index("source")
    assert table.loc["fused", "cases"] == 3
    assert table.loc["fused", "hd95_mm_cases"] == 2
    assert table.loc["fused", "hd95_mm_mean"] == pytest.approx(1.0)  # (2 + 0) / 2
    assert table.loc["axial", "hd95_mm_cases"] == 2


def test_one_case_has_sd_zero():
    frame = _frame()
    table = grouped_summary(frame[frame["case_id"] == "a"], ["source"]).set_index("source")
    assert table.loc["fused", "dice_sd"] == 0.0 and table.loc["fused", "cases"] == 1


def test_grouped_summary_by_two_keys():
    frame = pd.concat([_frame(), _frame().assign(weights="scratch", dice=0.5)], ignore_index=True)
    table = grouped_summary(frame, ["weights", "source"], ("dice",))
    assert list(zip(table["weights"], table["source"], strict=True)) == [
        ("imagenet", "axial"),
        ("imagenet", "fused"),
        ("scratch", "axial"),
        ("scratch", "fused"),
    ]
    assert table["cases"].tolist() == [3, 3, 3, 3]
    assert table.loc[2, "dice_mean"] == pytest.approx(0.5)
    # the pooled ratios come from the counts, not from the (changed) per-case Dice
    assert table.loc[3, "dice_pooled"] == pytest.approx(table.loc[1, "dice_pooled"])


def test_grouped_summary_without_labelled_rows_is_empty():
    frame = _frame()
    assert grouped_summary(frame[frame["status"] != "ok"], ["source"]).empty


def test_source_summary_is_the_per_source_grouping():
    frame = _frame()
    pd.testing.assert_frame_equal(source_summary(frame), grouped_summary(frame, ["source"]))


def test_source_order():
    sources = {"fused_soft", "sagittal", "fused", "axial", "fused_weighted", "coronal", "x", "b"}
    assert source_order(sources) == [
        "axial",
        "coronal",
        "sagittal",
        "fused",
        "fused_weighted",
        "fused_soft",
        "b",
        "x",
    ]
    assert source_order({"fused", "coronal"}) == ["coronal", "fused"]


def test_summarise():
    summary = summarise(_frame())
    assert summary["cases"] == 5
    assert summary["status_counts"] == {"ok": 3, "unlabelled": 1, "error": 1}
    assert summary["errors"] == {"e": "case e: broken"}
    assert list(summary["sources"]) == ["axial", "fused"]
    fused = summary["sources"]["fused"]
    assert fused["cases"] == 3
    assert fused["dice_mean"] == pytest.approx(0.7) and fused["dice_median"] == 0.9
    assert fused["dice_pooled"] == pytest.approx(18 / 29)
    assert fused["recall_pooled"] == pytest.approx(9 / 18)
    json.dumps(summary)  # plain values


def test_parts_consolidate_and_errors_are_not_finished(tmp_path: Path):
    out = str(tmp_path / "out")
    frame = _frame()
    for case_id, rows in frame.groupby("case_id"):
        records = [{k: v for k, v in r.items() if not _missing(v)} for r in rows.to_dict("records")]
        write_case_rows(records, out, case_id)
    assert finished_cases(out) == {"a", "b", "c", "d"}
    metrics, summary = consolidate(out, case_ids=["a", "b", "e"])
    assert sorted(set(metrics["case_id"])) == ["a", "b", "e"]
    assert summary["status_counts"] == {"ok": 2, "unlabelled": 0, "error": 1}
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    assert len(pd.read_parquet(tmp_path / "out" / "metrics.parquet")) == len(metrics)
    assert metrics.loc[metrics["case_id"] == "b", "hd95_mm"].isna().any()


def _missing(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def test_grouped_summary_by_keys_without_source():
    table = grouped_summary(_frame(), ["case_id"])
    assert table["case_id"].tolist() == ["a", "b", "c"]
    assert table["cases"].tolist() == [2, 2, 2]
