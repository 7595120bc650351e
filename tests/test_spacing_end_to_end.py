"""End to end (issue 15): a cohort of thick LPS slices is trained on the median voxel size and
segmented back onto each case's own grid; run.json and segment.json say what was used."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import affine_for, tiny_train_config, write_case

from stroke_ray.cohort import cases_to_frame
from stroke_ray.config import FUSION_MODES, SegmentConfig
from stroke_ray.segment import segment
from stroke_ray.train import train

pytestmark = pytest.mark.slow

SHAPE = (24, 28, 8)
ZOOMS = [(1.0, 1.0, 5.0), (1.0, 1.0, 5.0), (1.0, 1.0, 3.0), (1.0, 1.0, 3.0)]


@pytest.fixture(scope="module")
def thick_cohort(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("thick")
    cases = [
        write_case(folder, f"t{i}", SHAPE, affine_for("LPS", zooms), seed=i)
        for i, zooms in enumerate(ZOOMS)
    ]
    manifest = folder / "manifest.csv"
    cases_to_frame(cases).to_csv(manifest, index=False)
    return manifest


def test_thick_slices_train_on_the_median_spacing_and_segment_on_the_source_grid(
    ray_local, thick_cohort: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    run = train(tiny_train_config(thick_cohort, run_dir, val_fraction=0.25))
    recorded = json.loads((run_dir / "run.json").read_text())
    assert recorded["spacing_mm"] == [1.0, 1.0, 4.0] == run["spacing_mm"]  # RAS medians
    assert recorded["config"]["spacing"] == [1.0, 1.0, 4.0]
    assert recorded["definition"]["spacing"] == [1.0, 1.0, 4.0]
    assert recorded["config"]["augment"] is True
    validation = recorded["validation"]
    assert validation["cases"] == 1
    assert set(recorded["suggested_min_lesion_ml"]) == set(FUSION_MODES)
    for plane, values in recorded["planes"].items():
        assert 0 <= values["val_lesion_f1"] <= 1 and values["best_epoch"] in (0, 1), plane
    history = pd.read_parquet(run_dir / "history.parquet")
    assert {"val_lesion_f1", "val_score", "val_cases"} <= set(history.columns)

    out = tmp_path / "seg"
    frame, _ = segment(
        SegmentConfig(cohort=str(thick_cohort), model=str(run_dir), out=str(out), batch_size=8)
    )
    assert (frame["status"] == "ok").all()
    settings = json.loads((out / "segment.json").read_text())
    assert settings["min_lesion_ml"] == recorded["suggested_min_lesion_ml"][settings["fusion"]]
    assert "validation" in settings["min_lesion_ml_from"]
    for case_id in pd.read_csv(thick_cohort)["case_id"]:
        source = nib.load(thick_cohort.parent / case_id / "flair.nii.gz")
        mask = nib.load(out / "masks" / f"{case_id}.nii.gz")
        assert mask.shape == source.shape == SHAPE
        np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)

    again = tmp_path / "seg0"
    segment(
        SegmentConfig(
            cohort=str(thick_cohort), model=str(run_dir), out=str(again), min_lesion_ml=0.0
        )
    )
    settings = json.loads((again / "segment.json").read_text())
    assert settings["min_lesion_ml"] == 0.0 and settings["min_lesion_ml_from"] == "--min-lesion-ml"
