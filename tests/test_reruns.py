"""Reruns and inputs that must not pass silently (end to end, local Ray): a folder knows what
it holds, fewer planes are said out loud, NIfTI-2 goes through, one bad path stops one case."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import tiny_train_config

from stroke_ray.config import DemoConfig, ExperimentConfig, SegmentConfig
from stroke_ray.fingerprint import DefinitionMismatchError
from stroke_ray.planes import PLANES

pytestmark = pytest.mark.slow


def _mtimes(run_dir: Path) -> dict[str, int]:
    return {p: (run_dir / "models" / f"{p}.pt").stat().st_mtime_ns for p in PLANES}


@pytest.mark.parametrize("change", [{"epochs": 3}, {"seed": 1}, {"lesion_weight": 5.0}])
def test_train_into_a_run_of_other_options_stops_before_work(
    ray_local, trained_run, demo_manifest, tmp_path, change
):
    from stroke_ray.train import train

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before, run_before = _mtimes(run_dir), (run_dir / "run.json").read_text()
    name = next(iter(change))
    with pytest.raises(DefinitionMismatchError, match=f"{name}.*--restart"):
        train(tiny_train_config(demo_manifest, run_dir, **change))
    assert _mtimes(run_dir) == before and (run_dir / "run.json").read_text() == run_before


def test_unreadable_run_json_is_an_error_not_an_empty_run(
    ray_local, trained_run, demo_manifest, tmp_path
):
    from stroke_ray.train import train

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    (run_dir / "run.json").write_text("{ not json")
    with pytest.raises(json.JSONDecodeError):
        train(tiny_train_config(demo_manifest, run_dir))


def test_segment_into_an_output_of_other_fusion_stops_unless_overwrite(
    ray_local, trained_run, demo_manifest, tmp_path
):
    from stroke_ray.segment import segment

    config = SegmentConfig(
        cohort=str(demo_manifest), model=str(trained_run), out=str(tmp_path / "out"), batch_size=8,
        fusion="majority",
    )  # fmt: skip
    segment(config)
    mask = tmp_path / "out" / "masks" / "demo_000.nii.gz"
    written = mask.stat().st_mtime_ns
    with pytest.raises(DefinitionMismatchError, match="fusion"):
        segment(replace(config, fusion="soft"))
    assert mask.stat().st_mtime_ns == written
    frame, _ = segment(replace(config, fusion="soft", overwrite=True))
    assert set(frame["fusion"]) == {"soft"} and mask.stat().st_mtime_ns != written


def test_a_run_with_two_planes_is_warned_about_and_recorded(
    ray_local, trained_run, demo_manifest, tmp_path
):
    from stroke_ray.segment import segment

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    del record["planes"]["sagittal"]
    (run_dir / "run.json").write_text(json.dumps(record))
    out = tmp_path / "out"
    frame, _ = segment(
        SegmentConfig(
            cohort=str(demo_manifest), model=str(run_dir), out=str(out), fusion="majority",
            min_lesion_ml=0.0,
        )
    )  # fmt: skip
    settings = json.loads((out / "segment.json").read_text())
    assert settings["planes"] == ["axial", "coronal"]
    assert settings["warnings"] and "2 plane(s)" in settings["warnings"][0]
    assert "two planes must agree" in settings["warnings"][0]
    assert set(frame["source"]) == {"axial", "coronal", "fused"}
    for case_id in frame["case_id"].unique():  # with two planes, both must vote lesion
        fused = np.asanyarray(nib.load(out / "masks" / f"{case_id}.nii.gz").dataobj)
        votes = np.asanyarray(nib.load(out / "qc" / f"{case_id}_votes.nii.gz").dataobj)
        np.testing.assert_array_equal(fused, (votes == 2).astype(np.uint8))


def _as_nifti2(path: Path) -> None:
    image = nib.load(path)
    converted = nib.Nifti2Image(np.asanyarray(image.dataobj), image.affine, image.header)
    converted.set_qform(image.affine, code=1)
    converted.set_sform(image.affine, code=2)
    nib.save(converted, path)


def test_nifti2_case_is_segmented_end_to_end(ray_local, trained_run, demo_manifest, tmp_path):
    from stroke_ray.segment import segment

    cohort = tmp_path / "cohort"
    shutil.copytree(demo_manifest.parent, cohort)
    for file in (cohort / "demo_001").glob("*.nii.gz"):
        _as_nifti2(file)
    out = tmp_path / "out"
    frame, _ = segment(
        SegmentConfig(cohort=str(cohort / "manifest.csv"), model=str(trained_run), out=str(out))
    )
    assert (frame["status"] == "ok").all()
    mask = nib.load(out / "masks" / "demo_001.nii.gz")
    source = nib.load(cohort / "demo_001" / "demo_001_flair.nii.gz")
    assert isinstance(mask, nib.Nifti2Image) and mask.shape == source.shape
    np.testing.assert_allclose(mask.header.get_sform(), source.header.get_sform())
    np.testing.assert_allclose(mask.header.get_qform(), source.header.get_qform(), atol=1e-5)
    assert int(mask.header["sform_code"]) == 2


def test_a_path_leaving_the_cohort_folder_fails_that_case_only(
    ray_local, trained_run, demo_manifest, tmp_path
):
    from stroke_ray.segment import segment

    cohort = tmp_path / "cohort"
    shutil.copytree(demo_manifest.parent, cohort)
    manifest = pd.read_csv(cohort / "manifest.csv")
    manifest.loc[manifest.case_id == "demo_002", "t1"] = "../../etc/passwd"
    manifest.to_csv(cohort / "escape.csv", index=False)
    frame, summary = segment(
        SegmentConfig(
            cohort=str(cohort / "escape.csv"), model=str(trained_run), out=str(tmp_path / "out")
        )
    )
    bad = frame[frame.case_id == "demo_002"]
    assert len(bad) == 1 and bad["status"].iloc[0] == "error"
    assert "escapes the cohort folder" in bad["error"].iloc[0]
    assert summary["status_counts"] == {"ok": 4, "unlabelled": 0, "error": 1}


def test_experiment_rerun_with_another_split_refuses_the_old_models(
    ray_local, demo_manifest, tmp_path
):
    from stroke_ray.experiment import run_experiment

    training = tiny_train_config(demo_manifest, tmp_path / "exp", epochs=1)
    config = ExperimentConfig(
        cohort=str(demo_manifest), out=str(tmp_path / "exp"), weights=("none",),
        test_fraction=0.4, training=training,
    )  # fmt: skip
    run_experiment(config)
    models = sorted((tmp_path / "exp" / "runs").rglob("*.pt"))
    written = [path.stat().st_mtime_ns for path in models]
    with pytest.raises(DefinitionMismatchError, match="split fold0 test"):
        run_experiment(replace(config, test_fraction=0.6))
    with pytest.raises(DefinitionMismatchError, match="split fold0"):
        run_experiment(replace(config, training=replace(training, seed=5)))
    with pytest.raises(DefinitionMismatchError, match="lr"):  # same split, other schedule
        run_experiment(replace(config, training=replace(training, lr=0.01)))
    assert [path.stat().st_mtime_ns for path in models] == written and models


def test_quickstart_reports_held_out_cases_apart(ray_local, tmp_path, capsys):
    from stroke_ray.quickstart import quickstart

    training = tiny_train_config("", "", epochs=1)
    demo = DemoConfig(out_dir=str(tmp_path / "demo" / "cohort"), cases=5, shape=(32, 32, 24))
    summaries = quickstart(tmp_path / "demo", demo=demo, held_out_fraction=0.25, training=training)
    run = json.loads((tmp_path / "demo" / "run" / "run.json").read_text())
    trained_on = set(run["split"]["train"]) | set(run["split"]["val"])
    printed = capsys.readouterr().out
    held_out = printed.split("held-out cases (never seen in training): ", 1)[1].splitlines()[0]
    assert trained_on.isdisjoint(held_out.split(", ")) and len(trained_on) == 4
    assert summaries["held_out"]["cases"] == 1 and summaries["training"]["cases"] == 4
    assert "in-sample" in printed
