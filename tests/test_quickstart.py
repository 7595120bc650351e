"""Tests for stroke_ray.quickstart with training and segmentation stubbed out: a quarter of the
demo cases is held out of training, and held-out and training Dice are reported apart."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import stroke_ray.quickstart as quickstart_module
from stroke_ray.config import DemoConfig, SegmentConfig, TrainConfig

DICE = {"demo_000": 0.9, "demo_001": 0.1, "demo_002": 0.8, "demo_003": 0.7}


def _frame(case_ids: list[str]) -> pd.DataFrame:
    rows = []
    for case_id in case_ids:
        tp = int(DICE[case_id] * 10)
        for source in ("axial", "coronal", "sagittal", "fused"):
            rows.append(
                {
                    "case_id": case_id,
                    "source": source,
                    "status": "ok",
                    "error": None,
                    "dice": DICE[case_id],
                    "tp": tp,
                    "fp": 10 - tp,
                    "fn": 10 - tp,
                    "tn": 1000,
                }
            )
    return pd.DataFrame(rows)


def test_held_out_cases_are_not_trained_on_and_reported_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    trained: list[TrainConfig] = []
    segmented: list[SegmentConfig] = []

    def fake_train(config: TrainConfig) -> dict:
        trained.append(config)
        return {"planes": {"axial": {"val_dice": 0.5}}}

    def fake_segment(config: SegmentConfig, progress=None):
        segmented.append(config)
        case_ids = pd.read_csv(config.cohort)["case_id"].tolist()
        return _frame(case_ids), {}

    monkeypatch.setattr(quickstart_module, "train", fake_train)
    monkeypatch.setattr(quickstart_module, "segment", fake_segment)
    training = TrainConfig(cohort="", out="", weights="none", epochs=1, seed=0)
    demo = DemoConfig(out_dir=str(tmp_path / "cohort"), cases=4, shape=(32, 32, 24))
    summaries = quickstart_module.quickstart(
        tmp_path, demo=demo, held_out_fraction=0.25, training=training
    )

    (config,) = trained
    train_ids = pd.read_csv(config.cohort)["case_id"].tolist()
    assert config.out == str(tmp_path / "run") and config.epochs == 1
    assert len(train_ids) == 3
    (held_out,) = sorted(set(DICE) - set(train_ids))
    (seg,) = segmented
    assert seg.model == str(tmp_path / "run")
    assert sorted(pd.read_csv(seg.cohort)["case_id"]) == sorted(DICE)  # every case segmented

    assert summaries["held_out"]["cases"] == 1
    assert summaries["training"]["cases"] == 3
    fused = summaries["held_out"]["sources"]["fused"]
    assert fused["dice_mean"] == pytest.approx(DICE[held_out])
    training_mean = sum(DICE[c] for c in train_ids) / 3
    assert summaries["training"]["sources"]["fused"]["dice_mean"] == pytest.approx(training_mean)

    printed = capsys.readouterr().out
    held_out_part, training_part = printed.split("training cases (in-sample")
    assert f"held-out cases (never seen in training): {held_out}" in held_out_part
    assert f"{DICE[held_out]:.4f}" in held_out_part
    assert f"{training_mean:.4f}" in training_part
    assert "best validation Dice 0.5000" in printed
