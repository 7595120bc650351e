"""Tests for stroke_ray.derivatives and the BIDS layout of segment's writer: mask paths,
sidecars, dataset_description.json, masks in the reference image's geometry, and the
subject/session columns (without Ray: the read and write stages are plain functions)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import write_case, write_isles22_case

from stroke_ray import __version__
from stroke_ray.case_outputs import FusionSettings
from stroke_ray.cohort import ManifestError, scan_cohort
from stroke_ray.derivatives import (
    BIDS_VERSION,
    bids_mask_uri,
    sidecar,
    sidecar_uri,
    write_dataset_files,
)
from stroke_ray.inference import PlanePrediction
from stroke_ray.outputs import case_part_uri, fused_mask_uri
from stroke_ray.planes import brain_slice_indices, volume_to_slices
from stroke_ray.segment import CaseWriter, WriteSettings, _check_bids_names, read_stage
from stroke_ray.volumes import Inputs

ISLES22 = Inputs(("dwi", "adc", "flair"), "dwi", resample=True)


@pytest.mark.parametrize(
    ("case_id", "subject", "session", "reference", "expected"),
    [
        ("sub-a_ses-1", "strokecase0001", "0001", "dwi",
         "OUT/sub-strokecase0001/ses-0001/dwi/sub-strokecase0001_ses-0001_space-orig_label-L_mask.nii.gz"),
        ("x", "r001s001", "1", "t1",
         "OUT/sub-r001s001/ses-1/anat/sub-r001s001_ses-1_space-orig_label-L_mask.nii.gz"),
        ("case_07", None, None, "flair", "OUT/sub-case07/anat/sub-case07_space-orig_label-L_mask.nii.gz"),
        ("c", "sub-02", "ses-b", "adc", "OUT/sub-02/ses-b/dwi/sub-02_ses-b_space-orig_label-L_mask.nii.gz"),
    ],
)  # fmt: skip
def test_bids_mask_uri(case_id, subject, session, reference, expected) -> None:
    assert bids_mask_uri("OUT", case_id, subject, session, reference) == expected
    assert (
        fused_mask_uri(
            "OUT", case_id, layout="bids", subject=subject, session=session, reference=reference
        )
        == expected
    )
    assert fused_mask_uri("OUT", case_id) == f"OUT/masks/{case_id}.nii.gz"
    assert sidecar_uri(expected) == expected.removesuffix(".nii.gz") + ".json"


def test_sidecar_points_into_the_raw_dataset_or_at_the_image() -> None:
    inside = sidecar("s3://b/raw/sub-1/ses-1/dwi/sub-1_ses-1_dwi.nii.gz", "s3://b/raw")
    assert inside == {
        "Type": "Lesion",
        "Sources": ["bids:raw:sub-1/ses-1/dwi/sub-1_ses-1_dwi.nii.gz"],
        "SpatialReference": "bids:raw:sub-1/ses-1/dwi/sub-1_ses-1_dwi.nii.gz",
    }
    outside = sidecar("/data/c/flair.nii.gz", None)
    assert outside["Sources"] == ["/data/c/flair.nii.gz"] == [outside["SpatialReference"]]
    assert sidecar("/data/rawish/x.nii.gz", "/data/raw")["Sources"] == ["/data/rawish/x.nii.gz"]


def test_dataset_files(tmp_path: Path) -> None:
    write_dataset_files(str(tmp_path / "a"), "/data/isles22")
    description = json.loads((tmp_path / "a" / "dataset_description.json").read_text())
    assert description == {
        "Name": "stroke-ray lesion masks",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "stroke-ray", "Version": __version__}],
        "DatasetLinks": {"raw": "/data/isles22"},
    }
    assert "cases/" in (tmp_path / "a" / ".bidsignore").read_text().splitlines()
    write_dataset_files(str(tmp_path / "b"), None)
    assert "DatasetLinks" not in json.loads(
        (tmp_path / "b" / "dataset_description.json").read_text()
    )


def _perfect(work) -> dict[str, PlanePrediction]:
    """Each plane predicts the label exactly (what predict_plane would return)."""
    prepared = work.prepared
    label, brain = prepared.label.astype(np.float32), prepared.brain
    predictions = {}
    for plane in ("axial", "coronal", "sagittal"):
        indices = brain_slice_indices(brain, plane)
        predictions[plane] = (indices, volume_to_slices(label * brain, plane)[indices])
    return predictions


def _write(case, out: Path, settings: WriteSettings, inputs: Inputs) -> dict:
    row = read_stage(case.to_dict(), inputs)
    work = row["work"]
    assert work.error is None, work.error
    work.predictions = _perfect(work)
    return CaseWriter(settings)(row)


def test_bids_writer_on_an_isles22_case(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    written = write_isles22_case(raw, "strokecase0001")
    case = scan_cohort(str(raw)).cases[0]
    out = tmp_path / "out"
    settings = WriteSettings(
        out=str(out), run_id="r", fusion=FusionSettings(), layout="bids", reference="dwi",
        bids_root=str(raw),
    )  # fmt: skip

    summary = _write(case, out, settings, ISLES22)

    assert summary["status"] == "ok" and summary["dice"] == 1.0
    stem = "sub-strokecase0001_ses-0001_space-orig_label-L_mask"
    mask_path = out / "sub-strokecase0001" / "ses-0001" / "dwi" / f"{stem}.nii.gz"
    mask, dwi = nib.load(mask_path), nib.load(written["dwi"])
    assert mask.shape == dwi.shape and mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(
        np.asarray(mask.dataobj), np.asarray(nib.load(written["label"]).dataobj)
    )
    for form in ("qform", "sform"):
        np.testing.assert_array_equal(getattr(mask, f"get_{form}")(), getattr(dwi, f"get_{form}")())
        assert int(mask.header[f"{form}_code"]) == int(dwi.header[f"{form}_code"])
    assert json.loads(mask_path.with_name(f"{stem}.json").read_text()) == {
        "Type": "Lesion",
        "Sources": [
            "bids:raw:sub-strokecase0001/ses-0001/dwi/sub-strokecase0001_ses-0001_dwi.nii.gz"
        ],
        "SpatialReference": "bids:raw:sub-strokecase0001/ses-0001/dwi/sub-strokecase0001_ses-0001_dwi.nii.gz",
    }
    rows = pd.read_parquet(case_part_uri(str(out), case.case_id))
    assert set(rows["subject"]) == {"strokecase0001"} and set(rows["session"]) == {"0001"}
    assert set(rows["mask_uri"]) == {str(mask_path)}
    assert not (out / "masks").exists()


def test_flat_writer_keeps_its_layout_and_null_subject(tmp_path: Path) -> None:
    case = write_case(tmp_path / "cohort", "c1")
    out = tmp_path / "out"
    settings = WriteSettings(out=str(out), run_id="r", fusion=FusionSettings())
    assert _write(case, out, settings, Inputs())["status"] == "ok"
    assert (out / "masks" / "c1.nii.gz").exists()
    rows = pd.read_parquet(case_part_uri(str(out), "c1"))
    assert rows["subject"].isna().all() and rows["session"].isna().all()


def test_error_rows_carry_subject_and_session(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_isles22_case(raw, "strokecase0003", sequences=("dwi", "adc"), label=False)
    case = scan_cohort(str(raw)).cases[0]
    out = tmp_path / "out"
    row = read_stage(case.to_dict(), ISLES22)
    assert "no flair image" in row["work"].error
    settings = WriteSettings(out=str(out), run_id="r", fusion=FusionSettings(), layout="bids")
    assert CaseWriter(settings)(row)["status"] == "error"
    (error,) = pd.read_parquet(case_part_uri(str(out), case.case_id)).to_dict("records")
    assert error["subject"] == "strokecase0003" and error["session"] == "0001"
    assert "case sub-strokecase0003_ses-0001: no flair image" in error["error"]


def test_cases_that_share_a_bids_name_are_refused(tmp_path: Path) -> None:
    first, second = write_case(tmp_path, "case-1"), write_case(tmp_path, "case_1")
    with pytest.raises(ManifestError, match=r"\[\['case-1', 'case_1'\]\] would write the same"):
        _check_bids_names([first, second], "flair")
    _check_bids_names([first, write_case(tmp_path, "case2")], "flair")
