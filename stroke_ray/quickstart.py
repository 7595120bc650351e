"""The demo end to end: cohort → case split → train → segment → held-out and training Dice.

A quarter of the demo cases (at least one) is held out of training, so the first figure a user
sees is a held-out one; the training cases' figures are printed apart and called in-sample.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from stroke_ray.cohort import load_cohort, write_manifest
from stroke_ray.config import DemoConfig, SegmentConfig, TrainConfig
from stroke_ray.demo import generate_from_config
from stroke_ray.outputs import summarise
from stroke_ray.progress import case_progress, summary_table
from stroke_ray.segment import segment
from stroke_ray.splits import split_cases
from stroke_ray.train import train

__all__ = ["quickstart"]


def quickstart(
    root: Path, *, demo: DemoConfig, held_out_fraction: float, training: TrainConfig
) -> dict[str, dict]:
    """Run the demo (the cohort written by ``demo``, a manifest); return the summaries of the
    held-out and of the training cases."""
    manifest = generate_from_config(demo)
    print(f"demo cohort: {manifest}")
    all_cases = load_cohort(str(manifest))
    split = split_cases([case.case_id for case in all_cases], held_out_fraction, training.seed)
    train_manifest = Path(manifest).parent / "train.csv"
    chosen = [case for case in all_cases if case.case_id in split["train"]]
    write_manifest(chosen, str(train_manifest))
    run_dir = str(root / "run")
    run = train(replace(training, cohort=str(train_manifest), out=run_dir))
    for plane, values in run["planes"].items():
        print(f"{plane:>9}: best validation Dice {values['val_dice']:.4f}")
    config = SegmentConfig(cohort=str(manifest), model=run_dir, out=str(root / "segmentation"))
    with case_progress() as progress:
        frame, _ = segment(config, progress=progress)
    summaries = {
        "held_out": summarise(frame[frame["case_id"].isin(split["val"])]),
        "training": summarise(frame[frame["case_id"].isin(split["train"])]),
    }
    print(f"\nheld-out cases (never seen in training): {', '.join(split['val'])}")
    print(summary_table(summaries["held_out"]))
    print("\ntraining cases (in-sample, optimistic):")
    print(summary_table(summaries["training"]))
    return summaries
