"""The paper's protocol on any cohort: case-level split or K folds, train the three planes per
weight setting (transfer learning vs scratch), segment the held-out cases with every fusion
mode, and tabulate every metric per plane and fusion mode.

Every arm trains with the same options as ``stroke-ray train`` (one ``TrainConfig``, its
weights and folders replaced per arm), so an experiment's models are the models a user gets.

```
EXP_DIR/
  experiment.json                  protocol, folds, arms (weights × fold → run and segment folders)
  folds/fold<k>/{train,test}.csv   the case split (absolute paths/URIs)
  runs/<weights>/fold<k>/          training runs
  segment/<weights>/fold<k>/       segmentation outputs (fused = the default fusion; fused_<mode> rows
                                   for the other modes)
  metrics.parquet                  every row of every arm, with columns weights, fold
  table.csv, table.md              the paper-style table (mean ± sd over cases, pooled from counts)
```
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import Counter
from dataclasses import replace
from typing import Any

import pandas as pd

from stroke_ray.cohort import load_cohort, write_manifest
from stroke_ray.config import (
    FUSION_MODES,
    ExperimentConfig,
    SegmentConfig,
    TrainConfig,
    describe_weights,
    public_dict,
    weights_label,
)
from stroke_ray.fingerprint import ensure_same_definition
from stroke_ray.io import (
    absolute_uri,
    exists,
    join_uri,
    read_bytes,
    write_bytes_atomic,
    write_json,
    write_parquet,
)
from stroke_ray.outputs import grouped_summary
from stroke_ray.qc import dice_agreement_correlation
from stroke_ray.segment import segment
from stroke_ray.splits import kfold_cases, split_cases
from stroke_ray.train import train

__all__ = [
    "ExperimentConfig",
    "run_experiment",
    "paper_table",
    "arm_labels",
    "TABLE_METRICS",
    "DISTANCE_METRICS",
]

logger = logging.getLogger(__name__)

TABLE_METRICS: tuple[str, ...] = (
    "dice", "iou", "accuracy", "precision", "recall", "specificity", "hd95_mm", "assd_mm",
    "lesion_f1",
)  # fmt: skip
DISTANCE_METRICS: tuple[str, ...] = ("hd95_mm", "assd_mm")


def arm_labels(weights: tuple[str, ...]) -> dict[str, str]:
    """A folder name per weight setting; two files with one stem get their URI's hash too."""
    labels = {w: weights_label(w) for w in weights}
    repeated = {label for label, count in Counter(labels.values()).items() if count > 1}
    return {
        w: f"{label}-{hashlib.sha1(w.encode()).hexdigest()[:8]}" if label in repeated else label
        for w, label in labels.items()
    }


def _folds(config: ExperimentConfig, case_ids: list[str]) -> list[dict[str, list[str]]]:
    seed = config.training.seed
    if config.folds:
        return kfold_cases(case_ids, config.folds, seed)
    split = split_cases(case_ids, config.test_fraction, seed)
    return [{"train": split["train"], "test": split["val"]}]


def _run_arm(
    config: ExperimentConfig, weights: str, label: str, fold: int, manifests: dict[str, str]
) -> dict:
    run_dir = join_uri(config.out, "runs", label, f"fold{fold}")
    seg_dir = join_uri(config.out, "segment", label, f"fold{fold}")
    training = config.training
    train(replace(training, cohort=manifests["train"], out=run_dir, weights=weights))
    frame, _ = segment(
        SegmentConfig(
            cohort=manifests["test"],
            model=run_dir,
            out=seg_dir,
            fusion=SegmentConfig.fusion,
            extra_fusions=tuple(m for m in FUSION_MODES if m != SegmentConfig.fusion),
            use_gpu=training.use_gpu,
            min_lesion_ml=config.min_lesion_ml,
            overwrite=training.restart,
            storage_options=training.storage_options,
        )
    )
    return {
        "weights": label,
        "weights_source": weights,
        "weights_description": describe_weights(weights),
        "fold": fold,
        "run_dir": run_dir,
        "segment_dir": seg_dir,
        "segment_dirs": {mode: seg_dir for mode in FUSION_MODES},
        "rows": frame.assign(weights=label, fold=fold),
    }


def paper_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per weights × source: mean ± sd over cases (and how many each covers), pooled ratios
    and the summed counts they come from."""
    return grouped_summary(frame, ["weights", "source"], TABLE_METRICS)


def _cell(row: pd.Series, metric: str, cases: int) -> str:
    scale = 1 if metric.endswith("_mm") else 100
    text = f"{row[f'{metric}_mean'] * scale:.1f} ± {row[f'{metric}_sd'] * scale:.1f}"
    covered = int(row[f"{metric}_cases"])
    return text if covered == cases else f"{text} (n={covered})"


def table_markdown(table: pd.DataFrame) -> str:
    """The paper-style table as Markdown (mean ± sd, pooled Dice; percentages)."""
    header = (
        "| weights | source | cases | "
        + " | ".join(TABLE_METRICS)
        + " | pooled Dice | TP | FP | FN |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for _, row in table.iterrows():
        cases = int(row["cases"])
        cells = [_cell(row, metric, cases) for metric in TABLE_METRICS]
        lines.append(
            f"| {row['weights']} | {row['source']} | {cases} | " + " | ".join(cells)
            + f" | {row['dice_pooled'] * 100:.1f} | {row['tp']} | {row['fp']} | {row['fn']} |"
        )  # fmt: skip
    return (
        "\n".join(lines)
        + "\n\nRatios in %, distances in mm; pooled = from the summed TP/FP/FN/TN. "
        "(n=k): the mean covers k cases only; HD95 and ASSD are undefined where exactly one "
        "of prediction and truth is empty (experiment.json lists those cases).\n"
    )


def undefined_distances(frame: pd.DataFrame) -> dict[str, dict[str, list[str]]]:
    """Per weights and source, the labelled cases whose surface distances are undefined."""
    ok = frame[(frame["status"] == "ok") & frame["hd95_mm"].isna()]
    misses: dict[str, dict[str, list[str]]] = {}
    for (weights, source), rows in ok.groupby(["weights", "source"]):
        misses.setdefault(str(weights), {})[str(source)] = sorted(rows["case_id"])
    return misses


def _fold_uri(out: str, fold: int, part: str) -> str:
    return join_uri(out, "folds", f"fold{fold}", f"{part}.csv")


def _check_folds(out: str, folds: list[dict[str, list[str]]], options) -> None:
    """An experiment folder whose fold manifests hold other cases stops here (its models
    were trained on another split: reusing them could leak test cases into training)."""
    recorded, requested = {}, {}
    for fold, split in enumerate(folds):
        for part in ("train", "test"):
            uri = _fold_uri(out, fold, part)
            if exists(uri, options):
                written = pd.read_csv(io.BytesIO(read_bytes(uri, options)), dtype=str)
                recorded[f"split fold{fold} {part}"] = sorted(written["case_id"])
                requested[f"split fold{fold} {part}"] = sorted(split[part])
    if recorded:
        ensure_same_definition(out, recorded, requested, "--restart")


def run_experiment(config: ExperimentConfig) -> dict[str, Any]:
    """Run every arm of the protocol and write the tables; return experiment.json's content."""
    training = config.training or TrainConfig(cohort=config.cohort, out=config.out)
    config = replace(config, out=absolute_uri(config.out), training=training)
    options = training.storage_options
    cases = load_cohort(config.cohort, options)
    by_id = {case.case_id: case for case in cases}
    folds = _folds(config, sorted(by_id))
    if not training.restart:
        _check_folds(config.out, folds, options)
    labels = arm_labels(tuple(config.weights))
    arms, frames = [], []
    for fold, split in enumerate(folds):
        manifests = {
            part: write_manifest(
                [by_id[c] for c in split[part]],
                _fold_uri(config.out, fold, part),
                options,
            )
            for part in ("train", "test")
        }
        for weights in config.weights:
            logger.info("fold %d, weights %s", fold, labels[weights])
            arm = _run_arm(config, weights, labels[weights], fold, manifests)
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
        "training": _public_training(training),
        "fusion": SegmentConfig.fusion,  # the mode of the `fused` rows
        "min_lesion_ml": config.min_lesion_ml,  # None: each run's suggestion (segment.json)
        "arms": arms,
        "undefined_distances": undefined_distances(frame),
        "qc_dice_agreement_correlation": {
            label: dice_agreement_correlation(frame[frame["weights"] == label])
            for label in labels.values()
        },
    }
    write_json(summary, join_uri(config.out, "experiment.json"), options)
    return summary


def _public_training(training: TrainConfig) -> dict[str, Any]:
    """The arms' shared training options (each arm's cohort, folder and weights differ)."""
    values = public_dict(training)
    for key in ("cohort", "out", "weights"):
        values.pop(key)
    return values


def pretrain_encoder(
    out_path: str,
    *,
    work_dir: str,
    cases: int = 8,
    seed: int = 1000,
    training: TrainConfig | None = None,
) -> str:
    """Pretrain an encoder on a separately generated synthetic cohort and save its weights.

    Stands in for ImageNet weights where they cannot be downloaded: the axial model is
    trained from scratch on a demo cohort with another seed (no case shared with the demo),
    and its encoder state dict is written to ``out_path`` (loadable with ``--weights``).
    """
    import torch

    from stroke_ray.demo import generate_cohort
    from stroke_ray.runs import load_plane_model

    manifest = generate_cohort(join_uri(work_dir, "cohort"), n_cases=cases, seed=seed)
    run_dir = join_uri(work_dir, "run")
    base = training or TrainConfig(cohort="", out="", epochs=2, max_steps_per_epoch=20)
    train(
        replace(
            base, cohort=str(manifest), out=run_dir, weights="none", planes=("axial",), seed=seed
        )
    )
    encoder = load_plane_model(run_dir, "axial").encoder
    torch.save(encoder.state_dict(), out_path)
    return out_path
