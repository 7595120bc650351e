"""End to end: Ray Data segmentation of a cohort with a trained run (local and S3)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import ray_worker_pids

from stroke_ray.config import SegmentConfig
from stroke_ray.outputs import SOURCES
from stroke_ray.segment import segment

pytestmark = pytest.mark.slow


def _config(cohort, model, out, **overrides) -> SegmentConfig:
    return SegmentConfig(
        cohort=str(cohort), model=str(model), out=str(out), batch_size=8, **overrides
    )


@pytest.fixture(scope="module")
def segmented(ray_local, trained_run, demo_manifest, tmp_path_factory):
    """The demo cohort segmented once (with per-plane outputs)."""
    out = tmp_path_factory.mktemp("seg") / "out"
    frame, summary = segment(_config(demo_manifest, trained_run, out, save_planes=True))
    return out, frame, summary


def test_every_case_has_four_metric_rows(segmented, demo_manifest):
    out, frame, _ = segmented
    cases = set(pd.read_csv(demo_manifest)["case_id"])
    on_disk = pd.read_parquet(out / "metrics.parquet")
    assert len(on_disk) == 4 * len(cases)
    assert set(on_disk["case_id"]) == cases
    assert on_disk.groupby("case_id")["source"].apply(lambda s: sorted(s) == sorted(SOURCES)).all()
    assert on_disk["error"].isna().all()
    counts = on_disk[["tp", "fp", "fn", "tn"]].sum(axis=1)
    # each case's own voxel count: the demo writes some cases with thick slices
    voxels = on_disk["case_id"].map(
        lambda c: np.prod(nib.load(demo_manifest.parent / c / f"{c}_flair.nii.gz").shape)
    )
    assert (counts == voxels).all()


def test_masks_keep_the_source_geometry(segmented, demo_manifest):
    out, frame, _ = segmented
    for case_id in pd.read_csv(demo_manifest)["case_id"]:
        source = nib.load(demo_manifest.parent / case_id / f"{case_id}_flair.nii.gz")
        mask = nib.load(out / "masks" / f"{case_id}.nii.gz")
        assert mask.shape == source.shape
        assert mask.get_data_dtype() == np.uint8
        assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1}
        np.testing.assert_allclose(mask.header.get_sform(), source.header.get_sform())
        np.testing.assert_allclose(mask.header.get_qform(), source.header.get_qform(), atol=1e-5)
        assert int(mask.header["sform_code"]) == int(source.header["sform_code"])
        assert int(mask.header["qform_code"]) == int(source.header["qform_code"])
        for plane in ("axial", "coronal", "sagittal"):
            assert (out / "planes" / f"{case_id}_{plane}.nii.gz").exists()
        assert (out / "qc" / f"{case_id}_votes.nii.gz").exists()


def test_metrics_match_the_written_masks(segmented, demo_manifest):
    from stroke_ray.metrics import evaluate

    out, frame, _ = segmented
    row = frame[(frame.case_id == "demo_000") & (frame.source == "fused")].iloc[0]
    mask = np.asanyarray(nib.load(out / "masks" / "demo_000.nii.gz").dataobj)
    label_image = nib.load(demo_manifest.parent / "demo_000" / "demo_000_label.nii.gz")
    expected = evaluate(mask, np.asanyarray(label_image.dataobj), label_image.header.get_zooms())
    assert row["tp"] == expected["tp"] and row["fp"] == expected["fp"]
    assert row["dice"] == pytest.approx(expected["dice"])


def test_job_writes_a_valid_throughput_json(segmented, demo_manifest):
    from stroke_ray.throughput import STAGES, plan

    out, frame, _ = segmented
    record = json.loads((out / "throughput.json").read_text())
    cases = len(pd.read_csv(demo_manifest))
    assert record["cases"] == cases and record["status_counts"] == {"ok": cases}
    assert record["slices"] > 0 and record["wall_seconds"] > 0
    assert record["cases_per_hour"] == pytest.approx(
        cases / record["wall_seconds"] * 3600, rel=1e-3
    )
    assert record["slices_per_s"] == pytest.approx(
        record["slices"] / record["wall_seconds"], rel=1e-3
    )
    for stage in STAGES:
        assert record["stage_seconds"][stage]["total"] > 0, stage
    predict = record["stage_seconds"]["predict"]["total"]
    assert predict <= record["wall_seconds"]
    assert record["cpu_seconds_measured"] > 0
    assert record["cpu_seconds_reserved"] == pytest.approx(2 * record["wall_seconds"], rel=0.01)
    assert record["gpu_seconds_reserved"] == 0 and record["nodes"] == 1
    machine = record["machine"]
    assert machine["device"] == "cpu" and machine["precision"] in ("fp32", "bf16")
    assert machine["torch_threads"] >= 1 and isinstance(machine["cpu_flags"], list)
    assert record["price_per_hour"] is None and record["cost_per_1000_volumes"] is None
    assert "Map(PlanePredictor)" in record["ray_data_stats"]
    assert plan(record, cases=1000, hours=1.0).nodes >= 1
    # the rows' seconds are the stages' wall seconds of the case
    assert (frame["seconds"] > 0).all()


def test_price_per_hour_gives_the_cost(ray_local, trained_run, demo_manifest, tmp_path):
    out = tmp_path / "out"
    segment(_config(demo_manifest, trained_run, out, price_per_hour=3.2))
    record = json.loads((out / "throughput.json").read_text())
    expected = record["wall_seconds"] / 3600 * 3.2 * 1000 / record["cases"]
    assert record["cost_per_1000_volumes"] == pytest.approx(expected, rel=1e-3)
    assert json.loads((out / "segment.json").read_text())["price_per_hour"] == 3.2


def test_summary_pooled_dice_comes_from_counts(segmented):
    out, frame, summary = segmented
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["status_counts"] == {"ok": 5, "unlabelled": 0, "error": 0}
    fused = frame[frame.source == "fused"]
    tp, fp, fn = fused["tp"].sum(), fused["fp"].sum(), fused["fn"].sum()
    expected = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    assert on_disk["sources"]["fused"]["dice_pooled"] == pytest.approx(expected)


def test_duckdb_queries_from_the_readme(segmented):
    duckdb = pytest.importorskip("duckdb")
    out, frame, _ = segmented
    path = out / "metrics.parquet"
    worst = duckdb.sql(
        f"SELECT case_id, dice FROM '{path}' WHERE source = 'fused' AND status = 'ok' ORDER BY dice LIMIT 10"
    ).fetchall()
    assert [d for _, d in worst] == sorted(frame[frame.source == "fused"]["dice"])[:10]
    compare = duckdb.sql(
        f"""SELECT f.case_id, f.dice AS fused, max(p.dice) AS best_plane
            FROM '{path}' f JOIN '{path}' p ON p.case_id = f.case_id AND p.source <> 'fused'
            WHERE f.source = 'fused' GROUP BY f.case_id, f.dice"""
    ).df()
    assert len(compare) == 5


def _flip_to_lps_int16(source: Path, target: Path, slope: float) -> None:
    """Rewrite a RAS image as LPS voxel order with int16 storage and a scale slope."""
    image = nib.load(source)
    data = np.asarray(image.dataobj, dtype=np.float32)
    lps = nib.as_closest_canonical(image).slicer[::-1, ::-1, :]
    quantised = np.round(data / slope).astype(np.int16)[::-1, ::-1, :]
    out = nib.Nifti1Image(quantised, lps.affine)
    out.header.set_slope_inter(slope, 0.0)
    out.set_qform(lps.affine, code=1)
    out.set_sform(lps.affine, code=2)
    nib.save(out, target)


def _quantise_int16(source: Path, target: Path, slope: float) -> None:
    image = nib.load(source)
    data = np.round(np.asarray(image.dataobj, dtype=np.float32) / slope).astype(np.int16)
    out = nib.Nifti1Image(data, image.affine, image.header)
    out.header.set_data_dtype(np.int16)
    out.header.set_slope_inter(slope, 0.0)
    nib.save(out, target)


def test_mask_of_an_lps_int16_input_lines_up_with_its_image(
    ray_local, trained_run, demo_manifest, tmp_path
):
    """The same anatomy stored RAS and LPS/int16 gives the same mask, each in its own grid."""
    src = demo_manifest.parent / "demo_000"
    slope = {"t1": 0.05, "t2": 0.05, "flair": 0.05, "dwi": 0.05, "label": 1.0}
    rows = []
    for case_id, writer in (("ras", _quantise_int16), ("lps", _flip_to_lps_int16)):
        folder = tmp_path / case_id
        folder.mkdir()
        for name, s in slope.items():
            writer(src / f"demo_000_{name}.nii.gz", folder / f"{name}.nii.gz", s)
        rows.append({"case_id": case_id, **{n: f"{case_id}/{n}.nii.gz" for n in slope}})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "out"
    frame, _ = segment(_config(tmp_path / "manifest.csv", trained_run, out))
    assert (frame["status"] == "ok").all()
    ras_mask = nib.load(out / "masks" / "ras.nii.gz")
    lps_mask = nib.load(out / "masks" / "lps.nii.gz")
    lps_flair = nib.load(tmp_path / "lps" / "flair.nii.gz")
    assert lps_mask.shape == lps_flair.shape
    np.testing.assert_allclose(lps_mask.affine, lps_flair.affine)
    assert nib.aff2axcodes(lps_mask.affine) == ("L", "P", "S")
    assert int(lps_mask.header["qform_code"]) == 1 and int(lps_mask.header["sform_code"]) == 2
    np.testing.assert_allclose(lps_mask.header.get_qform(), lps_mask.header.get_sform(), atol=1e-5)
    ras_data = np.asanyarray(ras_mask.dataobj)
    lps_data = np.asanyarray(lps_mask.dataobj)
    np.testing.assert_array_equal(lps_data[::-1, ::-1, :], ras_data)
    # and it lines up with the label in the LPS file's own grid
    lps_label = np.asanyarray(nib.load(tmp_path / "lps" / "label.nii.gz").dataobj)
    lps_fused = frame[(frame.case_id == "lps") & (frame.source == "fused")].iloc[0]
    assert lps_fused["tp"] == int(np.logical_and(lps_data > 0, lps_label > 0).sum())
    ras_fused = frame[(frame.case_id == "ras") & (frame.source == "fused")].iloc[0]
    assert lps_fused["dice"] == pytest.approx(ras_fused["dice"])


def test_rerun_resumes_and_overwrite_redoes(ray_local, trained_run, demo_manifest, tmp_path):
    out = tmp_path / "out"
    segment(_config(demo_manifest, trained_run, out))
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    (out / "cases" / "demo_002.parquet").unlink()  # as if interrupted before demo_002 finished
    frame, _ = segment(_config(demo_manifest, trained_run, out))
    after = {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    redone = {name for name in stamps if after[name] != stamps[name]}
    assert redone == {"demo_002.nii.gz"}
    assert len(frame) == 20 and frame.groupby("case_id").size().eq(4).all()
    assert not list(out.rglob("*.tmp-*"))
    segment(_config(demo_manifest, trained_run, out, overwrite=True))
    again = {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    assert all(again[name] != after[name] for name in after)


def test_unlabelled_case_gets_mask_and_volume_only(ray_local, trained_run, demo_manifest, tmp_path):
    manifest = pd.read_csv(demo_manifest).head(2)
    manifest.loc[0, "label"] = ""
    manifest.to_csv(demo_manifest.parent / "unlabelled.csv", index=False)
    frame, summary = segment(
        _config(demo_manifest.parent / "unlabelled.csv", trained_run, tmp_path / "out")
    )
    row = frame[(frame.case_id == "demo_000") & (frame.source == "fused")].iloc[0]
    assert row["status"] == "unlabelled"
    assert pd.isna(row["dice"]) and row["volume_pred_ml"] >= 0
    assert (tmp_path / "out" / "masks" / "demo_000.nii.gz").exists()
    assert summary["status_counts"]["unlabelled"] == 1


def _kill_one_predictor_when_busy(out: Path, killed: list[int]) -> None:
    """Once the first case is finished, SIGKILL one alive model actor process."""
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "cases").exists() and any((out / "cases").glob("*.parquet")):
            for pid in ray_worker_pids("PlanePredictor"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.05)


def test_killed_model_actor_loses_no_case(ray_local, trained_run, demo_manifest, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(demo_manifest.parent, cohort)
    manifest = pd.read_csv(cohort / "manifest.csv")
    copies = pd.concat(
        [manifest.assign(case_id=manifest.case_id + f"_{k}") for k in range(4)], ignore_index=True
    )
    copies.to_csv(cohort / "many.csv", index=False)
    out = tmp_path / "out"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_one_predictor_when_busy, args=(out, killed))
    killer.start()
    frame, _ = segment(_config(cohort / "many.csv", trained_run, out, tta=True))
    killer.join()
    assert killed, "no model actor was killed"
    assert len(frame) == 4 * len(copies)
    assert frame.groupby("case_id").size().eq(4).all()
    assert (frame["status"] == "ok").all()
    for case_id in copies["case_id"]:
        mask = nib.load(out / "masks" / f"{case_id}.nii.gz")
        assert np.asanyarray(mask.dataobj).shape == mask.shape


def test_s3_input_and_output(
    ray_local, trained_run, demo_manifest, s3_bucket, s3_options, tmp_path, caplog
):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    fs.put(str(demo_manifest.parent) + "/", f"{s3_bucket}/cohort/", recursive=True)
    out = f"{s3_bucket}/results"
    with caplog.at_level("DEBUG"):
        frame, summary = segment(
            _config(
                f"{s3_bucket}/cohort/manifest.csv", trained_run, out, storage_options=s3_options
            )
        )
    assert (frame["status"] == "ok").all() and len(frame) == 20
    with fs.open(f"{out}/masks/demo_001.nii.gz", "rb") as handle:
        mask = nib.Nifti1Image.from_bytes(gzip.decompress(handle.read()))
    local = nib.load(demo_manifest.parent / "demo_001" / "demo_001_flair.nii.gz")
    assert mask.shape == local.shape
    np.testing.assert_allclose(mask.affine, local.affine)
    with fs.open(f"{out}/metrics.parquet", "rb") as handle:
        assert len(pd.read_parquet(handle)) == 20
    assert not [f for f in fs.find(out) if ".tmp-" in f]
    secret = s3_options["secret"]
    for file in fs.find(out):
        assert secret.encode() not in fs.cat(file), file
    assert secret not in caplog.text
