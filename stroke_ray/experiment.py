"""The paper's protocol on any cohort: case-level split or K folds, train the three planes per
weight setting (transfer learning vs scratch), segment the held-out cases with every fusion
mode, and tabulate every metric per plane and fusion mode.

```
EXP_DIR/
  experiment.json                  protocol, folds, arms (weights × fold → run and segment folders)
  folds/fold<k>/{train,test}.csv   the case split (absolute paths/URIs)
  runs/<weights>/fold<k>/          training runs
  segment/<weights>/fold<k>/       segmentation outputs (fused = majority; fused_weighted, fused_soft rows)
  metrics.parquet                  every row of every arm, with columns weights, fold
  table.csv, table.md              the paper-style table (mean ± sd over cases, pooled from counts)
```
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from stroke_ray.cohort import Case, cases_to_frame, load_cohort
from stroke_ray.io import StorageOptions, absolute_uri, join_uri, write_bytes_atomic
from stroke_ray.runs import write_json, write_parquet
from stroke_ray.segment import SegmentConfig, segment
from stroke_ray.splits import kfold_cases, split_cases
from stroke_ray.train import TrainConfig, train

__all__ = ["ExperimentConfig", "run_experiment", "paper_table", "weights_label", "TABLE_METRICS"]

logger = logging.getLogger(__name__)

TABLE_METRICS: tuple[str, ...] = (
    "dice", "iou", "accuracy", "precision", "recall", "specificity", "hd95_mm", "assd_mm",
)  # fmt: skip
POOLED_METRICS: tuple[str, ...] = ("dice", "iou", "accuracy", "precision", "recall", "specificity")
SOURCE_ORDER: tuple[str, ...] = (
    "axial",
    "coronal",
    "sagittal",
    "fused",
    "fused_weighted",
    "fused_soft",
)


@dataclass
class ExperimentConfig:
    """The protocol: how cases are split, which weights are compared, how models train."""

    cohort: str
    out: str
    weights: tuple[str, ...] = ("imagenet", "none")
    folds: int | None = None
    test_fraction: float = 0.25
    seed: int = 0
    training: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    use_gpu: bool = False
    storage_options: dict[str, Any] | None = field(default=None, repr=False)


def weights_label(weights: str) -> str:
    """A short name for a weight setting: imagenet, scratch, or the file's stem."""
    if weights == "none":
        return "scratch"
    if weights == "imagenet":
        return "imagenet"
    stem = os.path.basename(weights.rstrip("/")).split(".")[0]
    return f"pretrained-{stem}"


def _write_manifest(cases: list[Case], uri: str, options: StorageOptions) -> str:
    write_bytes_atomic(cases_to_frame(cases).to_csv(index=False).encode(), uri, options)
    return uri


def _folds(config: ExperimentConfig, case_ids: list[str]) -> list[dict[str, list[str]]]:
    if config.folds:
        return kfold_cases(case_ids, config.folds, config.seed)
    split = split_cases(case_ids, config.test_fraction, config.seed)
    return [{"train": split["train"], "test": split["val"]}]


def _weights_description(weights: str) -> str:
    if weights == "none":
        return "random initialisation (training from scratch)"
    if weights == "imagenet":
        return "ImageNet-pretrained encoder (smp download)"
    return f"encoder weights loaded from {weights}"


def _run_arm(config: ExperimentConfig, weights: str, fold: int, manifests: dict[str, str]) -> dict:
    label = weights_label(weights)
    run_dir = join_uri(config.out, "runs", label, f"fold{fold}")
    seg_dir = join_uri(config.out, "segment", label, f"fold{fold}")
    training = {"seed": config.seed, **config.training}
    train(
        TrainConfig(
            cohort=manifests["train"],
            out=run_dir,
            weights=weights,
            use_gpu=config.use_gpu,
            storage_options=config.storage_options,
            **training,
        )
    )
    frame, _ = segment(
        SegmentConfig(
            cohort=manifests["test"],
            model=run_dir,
            out=seg_dir,
            fusion="majority",
            extra_fusions=("weighted", "soft"),
            use_gpu=config.use_gpu,
            storage_options=config.storage_options,
        )
    )
    return {
        "weights": label,
        "weights_source": weights,
        "weights_description": _weights_description(weights),
        "fold": fold,
        "run_dir": run_dir,
        "segment_dir": seg_dir,
        "segment_dirs": {"majority": seg_dir, "weighted": seg_dir, "soft": seg_dir},
        "rows": frame.assign(weights=label, fold=fold),
    }


def paper_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per weights × source: mean ± sd over cases, pooled ratios and the summed counts."""
    from stroke_ray.metrics import ratios_from_counts

    ok = frame[frame["status"] == "ok"]
    records = []
    for (weights, source), rows in ok.groupby(["weights", "source"], sort=False):
        counts = {k: int(rows[k].sum()) for k in ("tp", "fp", "fn", "tn")}
        pooled = ratios_from_counts(**counts)
        record = {"weights": weights, "source": source, "cases": len(rows), **counts}
        for metric in TABLE_METRICS:
            record[f"{metric}_mean"] = float(rows[metric].mean())
            record[f"{metric}_sd"] = float(rows[metric].std(ddof=1)) if len(rows) > 1 else 0.0
        for metric in POOLED_METRICS:
            record[f"{metric}_pooled"] = pooled[metric]
        records.append(record)
    table = pd.DataFrame(records)
    order = {source: i for i, source in enumerate(SOURCE_ORDER)}
    return table.sort_values(
        ["weights", "source"],
        key=lambda c: c.map(order) if c.name == "source" else c,
        ignore_index=True,
    )


def table_markdown(table: pd.DataFrame) -> str:
    """The paper-style table as Markdown (mean ± sd, pooled Dice; percentages)."""
    header = (
        "| weights | source | cases | "
        + " | ".join(TABLE_METRICS)
        + " | pooled Dice | TP | FP | FN |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for _, row in table.iterrows():
        cells = []
        for metric in TABLE_METRICS:
            scale, unit = (1, "") if metric.endswith("_mm") else (100, "")
            cells.append(
                f"{row[f'{metric}_mean'] * scale:.1f} ± {row[f'{metric}_sd'] * scale:.1f}{unit}"
            )
        lines.append(
            f"| {row['weights']} | {row['source']} | {row['cases']} | " + " | ".join(cells)
            + f" | {row['dice_pooled'] * 100:.1f} | {row['tp']} | {row['fp']} | {row['fn']} |"
        )  # fmt: skip
    return (
        "\n".join(lines)
        + "\n\nRatios in %, distances in mm; pooled = from the summed TP/FP/FN/TN.\n"
    )


def qc_correlation(frame: pd.DataFrame) -> float | None:
    """Pearson correlation of fused Dice with plane agreement over labelled cases."""
    fused = frame[(frame["source"] == "fused") & (frame["status"] == "ok")]
    fused = fused.dropna(subset=["dice", "agreement_dice"])
    if len(fused) < 3 or fused["dice"].std() == 0 or fused["agreement_dice"].std() == 0:
        return None
    return float(np.corrcoef(fused["dice"], fused["agreement_dice"])[0, 1])


def run_experiment(config: ExperimentConfig) -> dict[str, Any]:
    """Run every arm of the protocol and write the tables; return experiment.json's content."""
    config = replace(config, out=absolute_uri(config.out))
    options = config.storage_options
    cases = load_cohort(config.cohort, options)
    by_id = {case.case_id: case for case in cases}
    folds = _folds(config, sorted(by_id))
    arms, frames = [], []
    for fold, split in enumerate(folds):
        manifests = {
            part: _write_manifest(
                [by_id[c] for c in split[part]],
                join_uri(config.out, "folds", f"fold{fold}", f"{part}.csv"),
                options,
            )
            for part in ("train", "test")
        }
        for weights in config.weights:
            logger.info("fold %d, weights %s", fold, weights_label(weights))
            arm = _run_arm(config, weights, fold, manifests)
            frames.append(arm.pop("rows"))
            arms.append(arm)
    frame = pd.concat(frames, ignore_index=True)
    write_parquet(frame, join_uri(config.out, "metrics.parquet"), options)
    table = paper_table(frame)
    write_bytes_atomic(
        table.to_csv(index=False).encode(), join_uri(config.out, "table.csv"), options
    )
    write_bytes_atomic(table_markdown(table).encode(), join_uri(config.out, "table.md"), options)
    summary = {
        "cohort": config.cohort,
        "folds": folds,
        "weights": list(config.weights),
        "training": config.training,
        "arms": arms,
        "qc_dice_agreement_correlation": {
            weights_label(w): qc_correlation(frame[frame["weights"] == weights_label(w)])
            for w in config.weights
        },
    }
    write_json(summary, join_uri(config.out, "experiment.json"), options)
    return summary


def pretrain_encoder(
    out_path: str,
    *,
    work_dir: str,
    encoder_name: str = "resnet50",
    cases: int = 8,
    seed: int = 1000,
    training: dict[str, Any] | None = None,
) -> str:
    """Pretrain an encoder on a separately generated synthetic cohort and save its weights.

    Stands in for ImageNet weights where they cannot be downloaded: the axial model is
    trained on a demo cohort with another seed (no case shared with the demo), and its
    encoder state dict is written to ``out_path`` (loadable with ``--weights``).
    """
    import torch

    from stroke_ray.demo import generate_cohort
    from stroke_ray.runs import load_plane_model

    manifest = generate_cohort(join_uri(work_dir, "cohort"), n_cases=cases, seed=seed)
    run_dir = join_uri(work_dir, "run")
    overrides = {"epochs": 2, "max_steps_per_epoch": 20, **(training or {})}
    base = TrainConfig(
        cohort=str(manifest),
        out=run_dir,
        encoder_name=encoder_name,
        weights="none",
        planes=("axial",),
    )
    train(replace(base, **overrides))
    encoder = load_plane_model(run_dir, "axial").encoder
    torch.save(encoder.state_dict(), out_path)
    return out_path
