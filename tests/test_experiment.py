"""The paper's protocol end to end on a tiny cohort: TL (weights from a file) vs scratch."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from helpers import TINY_MODEL

from stroke_ray.config import (
    FUSION_MODES,
    ExperimentConfig,
    SegmentConfig,
    TrainConfig,
    weights_label,
)
from stroke_ray.experiment import paper_table, run_experiment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def experiment(ray_local, demo_manifest, tmp_path_factory):
    """A 1-split experiment comparing a saved encoder file with scratch."""
    import segmentation_models_pytorch as smp

    root = tmp_path_factory.mktemp("experiment")
    encoder = smp.Unet("resnet18", encoder_weights=None, in_channels=4, classes=2).encoder
    weights = root / "my_encoder.pth"
    torch.save(encoder.state_dict(), weights)
    config = ExperimentConfig(
        cohort=str(demo_manifest),
        out=str(root / "exp"),
        weights=(str(weights), "none"),
        test_fraction=0.4,
        training=TrainConfig(
            cohort=str(demo_manifest),
            out=str(root / "exp"),
            **TINY_MODEL,
            epochs=2,
            freeze_epochs=1,
            max_steps_per_epoch=1,
            batch_size=4,
        ),
    )
    return root / "exp", run_experiment(config)


def test_arms_and_metrics(experiment, demo_manifest):
    out, summary = experiment
    frame = pd.read_parquet(out / "metrics.parquet")
    assert set(frame["weights"]) == {"pretrained-my_encoder", "scratch"}
    sources = set(frame["source"])
    others = {f"fused_{mode}" for mode in FUSION_MODES if mode != SegmentConfig.fusion}
    assert {"axial", "coronal", "sagittal", "fused", *others} <= sources
    test_cases = set(summary["folds"][0]["test"])
    train_cases = set(summary["folds"][0]["train"])
    assert test_cases.isdisjoint(train_cases) and set(frame["case_id"]) == test_cases
    assert len(test_cases) == 2
    on_disk = json.loads((out / "experiment.json").read_text())
    assert {arm["weights"] for arm in on_disk["arms"]} == {"pretrained-my_encoder", "scratch"}
    pretrained = next(a for a in on_disk["arms"] if a["weights"] != "scratch")
    assert "my_encoder.pth" in pretrained["weights_description"]
    history = pd.read_parquet(out / "runs" / "pretrained-my_encoder" / "fold0" / "history.parquet")
    assert (
        history.groupby("plane")["encoder_frozen"]
        .apply(list)
        .map(lambda v: v == [True, False])
        .all()
    )


def test_table_is_derivable_from_its_counts(experiment):
    out, _ = experiment
    table = pd.read_csv(out / "table.csv")
    assert len(table) == 2 * 6
    for _, row in table.iterrows():
        tp, fp, fn, tn = row["tp"], row["fp"], row["fn"], row["tn"]
        assert row["dice_pooled"] == pytest.approx(
            2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        )
        assert row["accuracy_pooled"] == pytest.approx((tp + tn) / (tp + fp + fn + tn))
        assert row["specificity_pooled"] == pytest.approx(tn / (tn + fp) if tn + fp else 1.0)
    frame = pd.read_parquet(out / "metrics.parquet")
    recomputed = paper_table(frame)
    pd.testing.assert_series_equal(recomputed["dice_mean"], table["dice_mean"], check_names=False)
    assert "± " in (out / "table.md").read_text()


def test_weights_labels():
    assert weights_label("none") == "scratch"
    assert weights_label("imagenet") == "imagenet"
    assert weights_label("s3://bucket/enc/resnet50_v2.pt") == "pretrained-resnet50_v2"


def test_two_weight_files_with_one_stem_get_their_own_arms():
    from stroke_ray.experiment import arm_labels

    labels = arm_labels(("s3://a/encoder.pt", "/data/b/encoder.pt", "none"))
    assert labels["none"] == "scratch"
    assert labels["s3://a/encoder.pt"] != labels["/data/b/encoder.pt"]
    assert all(
        label.startswith("pretrained-encoder-") for w, label in labels.items() if w != "none"
    )
    assert arm_labels(("s3://a/encoder.pt",)) == {"s3://a/encoder.pt": "pretrained-encoder"}
