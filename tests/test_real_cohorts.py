"""End to end on an ISLES'22-style BIDS cohort: DWI + ADC + FLAIR (FLAIR on another grid),
trained with --sequences dwi adc flair --reference dwi --resample and segmented with
--layout bids: masks as BIDS derivatives on the DWI grid, subject/session columns, a case
without FLAIR skipped in training and an error row in segmentation."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import tiny_train_config, write_isles22_case

from stroke_ray import __version__
from stroke_ray.config import SegmentConfig
from stroke_ray.report import write_report
from stroke_ray.segment import segment
from stroke_ray.train import train

pytestmark = pytest.mark.slow

SEQUENCES = ("dwi", "adc", "flair")


def _cohort(root: Path) -> dict[str, dict[str, Path]]:
    written = {
        f"strokecase000{i}": write_isles22_case(root, f"strokecase000{i}", seed=i)
        for i in range(1, 5)
    }
    written["strokecase0005"] = write_isles22_case(
        root, "strokecase0005", sequences=("dwi", "adc"), seed=5
    )
    (root / "dataset_description.json").write_text(
        '{"Name": "ISLES22-like", "BIDSVersion": "1.7.0"}'
    )
    return written


def test_isles22_bids_trains_and_segments_into_bids_derivatives(ray_local, tmp_path: Path):
    raw = tmp_path / "isles22"
    written = _cohort(raw)
    run_dir = tmp_path / "run"

    run = train(
        tiny_train_config(raw, run_dir, sequences=SEQUENCES, reference="dwi", resample=True)
    )

    assert run["status"] == "finished" and run["model"]["in_channels"] == 3
    recorded = json.loads((run_dir / "run.json").read_text())
    assert recorded["config"]["sequences"] == list(SEQUENCES)
    assert recorded["definition"]["reference"] == "dwi" and recorded["definition"]["resample"]
    (reason,) = recorded["skipped_cases"].values()
    assert "case sub-strokecase0005_ses-0001: no flair image" in reason

    out = tmp_path / "seg"
    config = SegmentConfig(cohort=str(raw), model=str(run_dir), out=str(out), layout="bids")
    frame, summary = segment(config)

    assert summary["status_counts"] == {"ok": 4, "unlabelled": 0, "error": 1}
    fused = frame[frame["source"] == "fused"].set_index("case_id")
    assert fused.loc["sub-strokecase0005_ses-0001", "error"].startswith(
        "case sub-strokecase0005_ses-0001: no flair image"
    )
    assert set(frame["subject"]) == {f"strokecase000{i}" for i in range(1, 6)}
    assert set(frame["session"]) == {"0001"}
    stored = pd.read_parquet(out / "metrics.parquet")
    assert list(stored.columns[:4]) == ["run_id", "case_id", "subject", "session"]

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"] == [{"Name": "stroke-ray", "Version": __version__}]
    assert description["DatasetLinks"] == {"raw": str(raw)}
    masks = sorted(out.glob("sub-*/ses-*/dwi/*_space-orig_label-L_mask.nii.gz"))
    assert len(masks) == 4 and not (out / "masks").exists()
    for mask_path in masks:
        subject = mask_path.parts[-4].removeprefix("sub-")
        dwi = nib.load(written[subject]["dwi"])
        mask = nib.load(mask_path)
        assert mask.shape == dwi.shape and mask.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
        for form in ("qform", "sform"):
            np.testing.assert_array_equal(
                getattr(mask, f"get_{form}")(), getattr(dwi, f"get_{form}")()
            )
            assert int(mask.header[f"{form}_code"]) == int(dwi.header[f"{form}_code"])
        source = str(written[subject]["dwi"].relative_to(raw))
        assert json.loads(mask_path.with_suffix("").with_suffix(".json").read_text()) == {
            "Type": "Lesion",
            "Sources": [f"bids:raw:{source}"],
            "SpatialReference": f"bids:raw:{source}",
        }
        assert fused.loc[f"sub-{subject}_ses-0001", "mask_uri"] == str(mask_path)

    page = Path(write_report(str(out))).read_text()
    assert page.count("Rows DWI and FLAIR; slices") == 4 and "no picture" not in page

    finished = {path: path.stat().st_mtime_ns for path in masks}
    segment(config)  # resume: finished cases are kept, the error case is retried
    assert {path: path.stat().st_mtime_ns for path in masks} == finished
