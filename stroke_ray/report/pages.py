"""One self-contained HTML report of a segmentation output folder or an experiment folder.

``write_report(OUT)`` reads ``OUT/metrics.parquet`` and, for a segmentation folder, its
``segment.json`` (cohort, training run, fusion), the run's ``run.json`` and
``history.parquet``, the fused masks and the cohort images; for an experiment folder
(``OUT/experiment.json``) its ``table.csv`` and every arm's run, with the per-case part taken
from the first transfer-learning arm's majority-fusion segmentation. Relative arm folders in
``experiment.json`` are looked up under ``OUT`` first. Figures are PNGs embedded as data URIs, so
the page needs no network and no other file.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from stroke_ray.config import PLANES, describe_weights, is_scratch
from stroke_ray.io import (
    StorageOptions,
    exists,
    join_uri,
    read_bytes,
    read_json,
    read_parquet,
    write_bytes_atomic,
)
from stroke_ray.outputs import POOLED_RATIOS, source_order, source_summary, summarise
from stroke_ray.report import figures
from stroke_ray.report import html as h
from stroke_ray.report.cases import case_sections
from stroke_ray.runs import history_uri, run_inputs, run_json_uri
from stroke_ray.throughput import STAGES
from stroke_ray.volumes import Inputs

__all__ = ["ReportError", "Segmentation", "load_segmentation", "tl_or_scratch", "write_report"]

logger = logging.getLogger(__name__)


class ReportError(ValueError):
    """The folder cannot be reported on (no metrics.parquet, bad option)."""


@dataclass
class Segmentation:
    """A segmentation output folder with its job settings, training run and metrics."""

    out: str
    settings: dict[str, Any]
    run: dict[str, Any]
    history: pd.DataFrame
    metrics: pd.DataFrame


def _optional_json(uri: str, options: StorageOptions) -> dict[str, Any]:
    return read_json(uri, options) if exists(uri, options) else {}


def _history(run_dir: str | None, options: StorageOptions) -> pd.DataFrame:
    if not run_dir or not exists(history_uri(run_dir), options):
        return pd.DataFrame()
    return read_parquet(history_uri(run_dir), options)


def load_segmentation(out: str, options: StorageOptions = None) -> Segmentation:
    """Read a segmentation folder's metrics, segment.json and its run's run.json/history."""
    settings = _optional_json(join_uri(out, "segment.json"), options)
    run_dir = settings.get("model")
    return Segmentation(
        out=out,
        settings=settings,
        run=_optional_json(run_json_uri(run_dir), options) if run_dir else {},
        history=_history(run_dir, options),
        metrics=read_parquet(join_uri(out, "metrics.parquet"), options),
    )


def tl_or_scratch(weights: str) -> str:
    """A weights setting as shown in the report: 'scratch' or 'TL (<weights>)'."""
    return "scratch" if is_scratch(weights) else f"TL ({weights})"


def _describe_weights(weights: str | None) -> str:
    return "unknown" if weights is None else describe_weights(weights)


def _source_table(summary: pd.DataFrame) -> str:
    """The per-source summary with mean ± sd in one column."""
    header = ["source", "labelled cases", "Dice mean ± sd", "Dice median"]
    header += [f"pooled {name}" for name in POOLED_RATIOS]
    rows = [
        [
            row["source"],
            h.Number(row["cases"], 0),
            f"{h.number(row['dice_mean'])} ± {h.number(row['dice_sd'])}",
            h.Number(row["dice_median"]),
            *[h.Number(row[f"{name}_pooled"]) for name in POOLED_RATIOS],
        ]
        for row in summary.to_dict("records")
    ]
    return h.table(header, rows)


def _paper_cell(record: dict[str, Any], column: str) -> object:
    value = record[column]
    if column == "weights":
        return tl_or_scratch(value)
    if column.endswith("_mean") and f"{column[:-5]}_sd" in record:
        return f"{h.number(value)} ± {h.number(record[f'{column[:-5]}_sd'])}"
    if isinstance(value, int | np.integer):
        return h.Number(value, 0)
    if isinstance(value, float | np.floating):
        return h.Number(value, 4)
    return value


def _paper_table(frame: pd.DataFrame) -> str:
    """table.csv as HTML: X_mean and X_sd in one 'X mean ± sd' column, weights named TL/scratch."""
    columns = [c for c in frame.columns if not (c.endswith("_sd") and f"{c[:-3]}_mean" in frame)]
    header = [c.replace("_mean", " mean ± sd") for c in columns]
    records = frame.to_dict("records")
    return h.table(header, [[_paper_cell(r, c) for c in columns] for r in records])


def _dice_section(frame: pd.DataFrame, categories: list[str], groups: list[str]) -> str:
    if frame["dice"].dropna().empty:
        return h.section("Dice per source", h.note("no labelled cases"))
    png = figures.dice_boxplot(frame, categories, groups)
    caption = "Dice per case, single planes vs fused (boxes: quartiles; points: cases)."
    return h.section("Dice per source", h.figure(png, "Dice box plots", caption))


def _curves_section(history: pd.DataFrame, caption: str) -> str:
    if history.empty:
        return h.section("Training", h.note("no history.parquet found"))
    png = figures.training_curves(history)
    return h.section("Training", h.figure(png, "training curves", caption))


def _generated() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _status_text(metrics: pd.DataFrame) -> str:
    summary = summarise(metrics)
    counts = summary["status_counts"]
    return (
        f"{summary['cases']} ({counts['ok']} ok, {counts['unlabelled']} unlabelled, "
        f"{counts['error']} errors)"
    )


def _describe_inputs(inputs: Inputs) -> str:
    """The run's input sequences, reference grid and resampling, in words."""
    grid = "others resampled onto it" if inputs.resample else "others on its grid"
    return f"{', '.join(inputs.sequences)} (reference {inputs.reference}, {grid})"


def _seconds(value: float | None) -> str:
    return "unknown" if value is None else f"{value:,.1f} s"


def _throughput_section(out: str, options: StorageOptions) -> str:
    """Speed and cost of the job that wrote the folder (its throughput.json)."""
    uri = join_uri(out, "throughput.json")
    if not exists(uri, options):
        return h.section("Throughput and cost", h.note("no throughput.json (an older job)"))
    record = read_json(uri, options)
    machine = record.get("machine") or {}
    stages = record.get("stage_seconds") or {}
    where = machine.get("gpu") or machine.get("cpu_model") or "unknown"
    flags = ", ".join(machine.get("cpu_flags") or []) or "unknown"
    price = record.get("price_per_hour")
    items = {
        "cases (this job)": record.get("cases"),
        "wall time": _seconds(record.get("wall_seconds")),
        "cases per hour": h.number(record.get("cases_per_hour"), 1),
        "slices per second": h.number(record.get("slices_per_s"), 2),
        "seconds per case": _seconds(record.get("seconds_per_case")),
        "per case: read / predict / write": " / ".join(
            _seconds((stages.get(stage) or {}).get("per_case")) for stage in STAGES
        ),
        "CPU seconds (stages, measured)": h.number(record.get("cpu_seconds_measured"), 0),
        "CPU seconds reserved (CPUs × wall)": h.number(record.get("cpu_seconds_reserved"), 0),
        "GPU seconds reserved": h.number(record.get("gpu_seconds_reserved"), 0),
        "nodes, model actors": f"{record.get('nodes')}, {record.get('num_actors')}",
        "model ran on": f"{where} ({machine.get('precision', '?')}, "
        f"{machine.get('torch_threads', '?')} threads); CPU flags: {flags}",
        "price per node-hour": "not given (--price-per-hour)" if price is None else price,
        "cost of this job": h.number(record.get("cost"), 2),
        "cost per 1,000 volumes": h.number(record.get("cost_per_1000_volumes"), 2),
    }
    note = h.note(
        "Stages overlap, so their seconds add up to more than the wall time. "
        "`stroke-ray plan --cases N --hours T --throughput OUT` turns these figures into "
        "nodes and cost for a cohort."
    )
    return h.section("Throughput and cost", h.definitions(items), note)


def _segmentation_page(out: str, max_cases: int, options: StorageOptions) -> str:
    seg = load_segmentation(out, options)
    settings, run = seg.settings, seg.run
    inputs = run_inputs(run)
    run_id = settings.get("run_id") or run.get("run_id") or "unknown run"
    best = ", ".join(f"{p} {v['val_dice']:.3f}" for p, v in run.get("planes", {}).items())
    overview = {
        "run id": run_id,
        "training run": settings.get("model", "unknown"),
        "cohort": settings.get("cohort", "unknown"),
        "fusion": settings.get("fusion", "unknown"),
        "test-time augmentation": settings.get("tta", "unknown"),
        "encoder": run.get("model", {}).get("encoder_name", "unknown"),
        "sequences": _describe_inputs(inputs),
        "pretrained weights": _describe_weights(run.get("config", {}).get("weights")),
        "best validation Dice": best or "unknown",
        "cases": _status_text(seg.metrics),
        "generated": _generated(),
    }
    ok = seg.metrics[seg.metrics["status"] == "ok"]
    boxes = pd.DataFrame({"category": ok["source"], "group": "all", "dice": ok["dice"]})
    categories = source_order(set(ok["source"]))
    history = seg.history.assign(group="run") if not seg.history.empty else seg.history
    pooled_note = h.note("Pooled ratios come from the confusion counts summed over cases.")
    sections = [
        h.section("What was run", h.definitions(overview)),
        h.section("Summary", _source_table(source_summary(seg.metrics)), pooled_note),
        _dice_section(boxes, categories, ["all"]),
        _throughput_section(out, options),
        _curves_section(history, "Validation Dice and training loss per epoch, per plane."),
        case_sections(
            out,
            seg.metrics,
            settings.get("cohort"),
            inputs=inputs,
            layout=settings.get("layout", "flat"),
            max_cases=max_cases,
            options=options,
            label=f"Run {run_id}, {overview['fusion']} fusion",
        ),
    ]
    return h.page(f"stroke-ray report: {run_id}", sections)


def _resolve(base: str, path: str, options: StorageOptions) -> str:
    """An arm's folder: URIs and absolute paths as given; a relative one under the
    experiment folder when it is there, else as given (relative to the working folder)."""
    if "://" in path or path.startswith("/"):
        return path
    inside = join_uri(base, path)
    return inside if exists(inside, options) else path


def _tl_first(arms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Arms with transfer-learning settings before scratch (stable otherwise)."""
    return sorted(arms, key=lambda arm: is_scratch(arm.get("weights")))


def _arm_label(arm: dict[str, Any], several_folds: bool) -> str:
    label = tl_or_scratch(arm.get("weights"))
    return f"{label} fold {arm.get('fold')}" if several_folds else label


def _experiment_boxes(metrics: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Dice per weights setting and category (planes once per arm, then fused_<fusion>)."""
    ok = metrics[metrics["status"] == "ok"].copy()
    is_plane = ok["source"].isin(PLANES)
    fused_name = "fused_" + ok["fusion"].astype(str)
    ok["category"] = ok["source"].where(is_plane | (ok["source"] != "fused"), fused_name)
    ok = ok[~ok.duplicated(["weights", "fold", "case_id", "category"])]
    ok = ok.sort_values("weights", key=lambda w: w.map(is_scratch), kind="stable")
    ok["group"] = ok["weights"].map(tl_or_scratch)
    return ok, source_order(set(ok["category"])), list(dict.fromkeys(ok["group"]))


def _experiment_history(
    out: str, arms: list[dict[str, Any]], options: StorageOptions
) -> pd.DataFrame:
    several_folds = len({arm.get("fold") for arm in arms}) > 1
    frames = [
        _history(_resolve(out, arm["run_dir"], options), options).assign(
            group=_arm_label(arm, several_folds)
        )
        for arm in arms
    ]
    frames = [frame for frame in frames if "epoch" in frame]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _experiment_overview(experiment: dict[str, Any]) -> dict[str, str]:
    """experiment.json's entries as text: arms and folds counted, the rest as compact JSON."""
    items = {}
    for key, value in experiment.items():
        if key in ("arms", "folds") and isinstance(value, list):
            items[key] = str(len(value))
        else:
            items[key] = value if isinstance(value, str) else json.dumps(value, default=str)
    return items


def _experiment_page(out: str, max_cases: int, options: StorageOptions) -> str:
    experiment = read_json(join_uri(out, "experiment.json"), options)
    arms = _tl_first(experiment["arms"])
    metrics = read_parquet(join_uri(out, "metrics.parquet"), options)
    table_uri = join_uri(out, "table.csv")
    several_folds = len({arm.get("fold") for arm in arms}) > 1
    arm_rows = [
        [
            _arm_label(arm, several_folds),
            arm.get("weights_description")
            or _describe_weights(arm.get("weights_source", arm.get("weights"))),
            arm.get("fold"),
            arm.get("run_dir"),
            ", ".join(arm.get("segment_dirs", {})),
        ]
        for arm in arms
    ]
    summary = (
        _paper_table(pd.read_csv(io.BytesIO(read_bytes(table_uri, options))))
        if exists(table_uri, options)
        else h.note("no table.csv")
    )
    chosen = arms[0]  # the first transfer-learning arm when there is one
    dirs = chosen["segment_dirs"]
    fusion = "majority" if "majority" in dirs else next(iter(dirs))
    seg = load_segmentation(_resolve(out, dirs[fusion], options), options)
    title = experiment.get("name") or out.rstrip("/").rsplit("/", 1)[-1]
    sections = [
        h.section(
            "What was run",
            h.definitions({**_experiment_overview(experiment), "generated": _generated()}),
            h.table(["setting", "pretrained weights", "fold", "run", "fusion modes"], arm_rows),
        ),
        h.section("Summary (table.csv)", summary),
        _dice_section(*_experiment_boxes(metrics)),
        _curves_section(
            _experiment_history(out, arms, options),
            "Validation Dice and training loss per epoch: colour per plane, line style per "
            "setting, transfer learning (TL) vs scratch.",
        ),
        case_sections(
            seg.out,
            seg.metrics,
            seg.settings.get("cohort"),
            inputs=run_inputs(seg.run),
            layout=seg.settings.get("layout", "flat"),
            max_cases=max_cases,
            options=options,
            label=f"Cases of {_arm_label(chosen, several_folds)}, {fusion} fusion",
        ),
    ]
    return h.page(f"stroke-ray experiment report: {title}", sections)


def write_report(
    out: str,
    html_path: str | None = None,
    *,
    max_cases: int = 50,
    storage_options: StorageOptions = None,
) -> str:
    """Write the HTML report of ``out`` (default ``out/report.html``); return its path/URI."""
    if max_cases < 0:
        raise ReportError(f"max_cases must be >= 0, got {max_cases}")
    if not exists(join_uri(out, "metrics.parquet"), storage_options):
        raise ReportError(f"{out}: no metrics.parquet; give a segmentation or experiment folder")
    target = html_path or join_uri(out, "report.html")
    if exists(join_uri(out, "experiment.json"), storage_options):
        page = _experiment_page(out, max_cases, storage_options)
    else:
        page = _segmentation_page(out, max_cases, storage_options)
    write_bytes_atomic(page.encode("utf-8"), target, storage_options)
    logger.info("report written to %s (%.1f MB)", target, len(page) / 1e6)
    return target
