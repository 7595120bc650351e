"""Fast tests of the segment stages without Ray: a case goes read → write, carrying its
per-stage timings; the actor thread rule. (End-to-end Ray jobs are in test_segment.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import affine_for, write_case

from stroke_ray.case_outputs import FusionSettings
from stroke_ray.planes import brain_slice_indices, volume_to_slices
from stroke_ray.segment import CaseWork, WriteSettings, read_stage, threads_per_actor, write_stage
from stroke_ray.throughput import STAGES
from stroke_ray.volumes import Inputs


@pytest.mark.parametrize(
    ("node_cpus", "actors", "threads"),
    [
        ([2.0], 1, 2),  # this machine: one actor, a thread per core
        ([2.0], 2, 1),
        ([16.0], 3, 5),
        ([8.0, 8.0], 1, 8),  # cluster CPUs are not one node's: 16 threads would oversubscribe
        ([8.0, 8.0], 4, 4),
        ([16.0, 4.0], 2, 4),  # the smallest node counts
        ([2.0], 5, 1),
        ([], 1, 1),
    ],
)
def test_threads_per_actor(node_cpus, actors, threads):
    assert threads_per_actor(node_cpus, actors) == threads


def _predicted(work: CaseWork) -> CaseWork:
    """What the model actor leaves: each plane's brain-slice 'probabilities' (the label)."""
    prepared = work.prepared
    label = prepared.label.astype(np.float32)
    work.predictions = {}
    for plane in ("axial", "coronal", "sagittal"):
        indices = brain_slice_indices(prepared.brain, plane)
        work.predictions[plane] = (indices, volume_to_slices(label, plane)[indices])
    work.slices = sum(len(indices) for indices, _ in work.predictions.values())
    work.stage_seconds["predict"] = 1.5
    work.seconds += 1.5
    work.predictor = {"device": "cpu", "precision": "fp32"}
    work.prepared.image = None
    return work


def test_a_case_carries_its_stage_timings_to_the_summary_row(tmp_path: Path):
    case = write_case(tmp_path, "c1", (14, 12, 10), affine_for("LPS", (1.0, 1.0, 2.0)), seed=3)
    row = read_stage(case.to_dict(), Inputs())
    work = row["work"]
    assert work.error is None and work.stage_seconds["read"] > 0 and work.cpu_seconds > 0
    _predicted(work)
    settings = WriteSettings(out=str(tmp_path / "out"), run_id="r", fusion=FusionSettings())
    result = write_stage(row, settings)
    assert result["status"] == "ok" and result["dice"] == pytest.approx(1.0)
    for stage in STAGES:
        assert result[f"{stage}_seconds"] > 0, stage
    assert result["predict_seconds"] == 1.5
    assert result["seconds"] == pytest.approx(sum(result[f"{s}_seconds"] for s in STAGES))
    assert result["slices"] == work.slices > 0
    assert json.loads(result["predictor"])["precision"] == "fp32"
    rows = pd.read_parquet(tmp_path / "out" / "cases" / "c1.parquet")
    # the rows are written inside the write stage: their seconds stop just before its end
    assert ((rows["seconds"] > 1.5) & (rows["seconds"] <= result["seconds"])).all()


def test_a_failed_read_still_reports_its_time(tmp_path: Path):
    case = write_case(tmp_path, "c2", (14, 12, 10), affine_for("RAS"), seed=3)
    Path(case.images["dwi"]).write_bytes(b"not a nifti")
    row = read_stage(case.to_dict(), Inputs())
    settings = WriteSettings(out=str(tmp_path / "out"), run_id="r", fusion=FusionSettings())
    result = write_stage(row, settings)
    assert result["status"] == "error" and "dwi" in result["error"]
    assert result["read_seconds"] > 0 and result["predict_seconds"] == 0.0
    assert result["slices"] == 0 and result["predictor"] is None
