"""End to end: Ray Train fits three plane models; the run folder; resume; faults; bad cases."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import ray_worker_pids, tiny_train_config

from stroke_ray.config import PLANES
from stroke_ray.runs import load_plane_model

pytestmark = pytest.mark.slow


def test_run_folder_has_models_split_and_history(trained_run: Path, demo_manifest: Path):
    run = json.loads((trained_run / "run.json").read_text())
    assert run["status"] == "finished"
    split = run["split"]
    all_cases = set(pd.read_csv(demo_manifest)["case_id"])
    assert set(split["train"]).isdisjoint(split["val"])
    assert set(split["train"]) | set(split["val"]) == all_cases
    assert run["model"]["encoder_name"] == "resnet18"
    assert run["config"]["model"]["encoder_name"] == "resnet18"
    assert "storage_options" not in run["config"]
    assert {"torch", "ray", "segmentation_models_pytorch"} <= set(run["versions"])
    history = pd.read_parquet(trained_run / "history.parquet")
    assert sorted(history["plane"].unique()) == sorted(PLANES)
    assert history.groupby("plane")["epoch"].apply(list).map(sorted).tolist() == [[0, 1]] * 3
    assert history["val_dice"].between(0, 1).all()
    for plane in PLANES:
        assert 0 <= run["planes"][plane]["val_dice"] <= 1
        model = load_plane_model(str(trained_run), plane)
        assert model(torch.zeros(1, 4, 32, 32)).shape == (1, 2, 32, 32)


def test_rerun_keeps_finished_planes(ray_local, trained_run: Path, demo_manifest: Path):
    from stroke_ray.train import train

    before = {p: (trained_run / "models" / f"{p}.pt").stat().st_mtime_ns for p in PLANES}
    history_before = pd.read_parquet(trained_run / "history.parquet")
    train(tiny_train_config(demo_manifest, trained_run))
    after = {p: (trained_run / "models" / f"{p}.pt").stat().st_mtime_ns for p in PLANES}
    assert after == before
    pd.testing.assert_frame_equal(
        pd.read_parquet(trained_run / "history.parquet").sort_values(
            ["plane", "epoch"], ignore_index=True
        ),
        history_before.sort_values(["plane", "epoch"], ignore_index=True),
    )


def test_unfinished_plane_resumes_from_its_checkpoint(
    ray_local, trained_run, demo_manifest, tmp_path
):
    from stroke_ray.train import train

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    (run_dir / "models" / "axial.pt").unlink()  # as if axial had not finished
    # ... in a run started with epochs=3: epochs is part of the run's recorded definition,
    # and a rerun that asks for another definition is refused (tests/test_reruns.py)
    run = json.loads((run_dir / "run.json").read_text())
    run["definition"]["epochs"] = 3
    (run_dir / "run.json").write_text(json.dumps(run))
    old = pd.read_parquet(run_dir / "history.parquet")
    train(tiny_train_config(demo_manifest, run_dir, epochs=3))
    history = pd.read_parquet(run_dir / "history.parquet")
    axial = history[history.plane == "axial"].sort_values("epoch")
    assert axial["epoch"].tolist() == [0, 1, 2]
    previous = old[old.plane == "axial"].sort_values("epoch")
    # epochs 0 and 1 come from the checkpoint, not from training again
    assert axial["train_loss"].tolist()[:2] == previous["train_loss"].tolist()
    assert (run_dir / "models" / "axial.pt").exists()
    assert len(history[history.plane == "coronal"]) == 2  # finished planes untouched


def test_restart_starts_over(ray_local, demo_manifest, tmp_path):
    from stroke_ray.train import train

    out = tmp_path / "run"
    (out / "models").mkdir(parents=True)
    (out / "models" / "axial.pt").write_bytes(b"stale")
    train(tiny_train_config(demo_manifest, out, planes=("axial",), epochs=1, restart=True))
    assert (out / "models" / "axial.pt").read_bytes() != b"stale"


def _kill_first_worker_after_checkpoint(storage: Path, killed: list[int]) -> None:
    deadline = time.time() + 240
    while time.time() < deadline and not list(storage.glob("checkpoint_*")):
        time.sleep(0.2)
    for pid in ray_worker_pids("RayTrainWorker"):
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        return


def test_killed_worker_resumes_from_last_checkpoint(ray_local, demo_manifest, tmp_path):
    from stroke_ray.train import train

    out = tmp_path / "run"
    config = tiny_train_config(demo_manifest, out, planes=("axial",), epochs=4, max_failures=2)
    killed: list[int] = []
    killer = threading.Thread(
        target=_kill_first_worker_after_checkpoint, args=(out / "ray" / "axial", killed)
    )
    killer.start()
    run = train(config)
    killer.join()
    assert killed, "no training worker was killed"
    history = pd.read_parquet(out / "history.parquet")
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    assert run["planes"]["axial"]["epochs"] == 4


def test_pretrained_encoder_file_is_frozen_then_fine_tuned(
    ray_local, demo_manifest, tmp_path, monkeypatch
):
    import segmentation_models_pytorch as smp

    from stroke_ray.train import train

    encoder = smp.Unet("resnet18", encoder_weights=None, in_channels=4, classes=2).encoder
    torch.save(encoder.state_dict(), tmp_path / "encoder.pth")
    monkeypatch.chdir(tmp_path)  # relative paths: Ray workers run elsewhere, must still find them
    config = tiny_train_config(
        demo_manifest,
        "run",
        planes=("axial",),
        weights="encoder.pth",
        freeze_epochs=1,
        lr=1e-3,
        finetune_lr=1e-5,
    )
    train(config)
    history = pd.read_parquet(tmp_path / "run" / "history.parquet").sort_values("epoch")
    assert history["encoder_frozen"].tolist() == [True, False]
    assert history["lr"].tolist() == [1e-3, 1e-5]


def test_bad_cases_are_skipped_with_a_reason(ray_local, demo_manifest, tmp_path):
    from stroke_ray.cohort import load_cohort
    from stroke_ray.train import TrainError, screen_cases
    from stroke_ray.volumes import Inputs

    cohort = tmp_path / "cohort"
    shutil.copytree(demo_manifest.parent, cohort)
    (cohort / "demo_003" / "demo_003_dwi.nii.gz").write_bytes(b"not a nifti file")
    cases = load_cohort(str(cohort / "manifest.csv"))
    usable, skipped, spacings = screen_cases(cases, None, Inputs())
    assert "demo_003" not in {case.case_id for case in usable}
    assert "demo_003" in skipped and "dwi" in skipped["demo_003"] and "NIfTI" in skipped["demo_003"]
    assert len(usable) == 4 and set(spacings) == {case.case_id for case in usable}

    from stroke_ray.train import train

    with pytest.raises(TrainError, match="usable"):
        train(tiny_train_config(cohort / "manifest.csv", tmp_path / "run", min_cases=5))


@pytest.mark.parametrize("broken", ["dwi", "label"])
def test_case_failing_in_a_worker_is_named_not_dropped(tmp_path, broken):
    """A case that passed screening but fails to load in a worker is reported by id and reason
    (train() records these per plane in run.json) while the other cases still give slices."""
    from helpers import write_case

    from stroke_ray.train import _load_slices
    from stroke_ray.volumes import Inputs

    good = write_case(tmp_path, "good", seed=1)
    bad = write_case(tmp_path, "bad", seed=2)
    Path(bad.label if broken == "label" else bad.images[broken]).write_bytes(b"broken")
    slices, failed = _load_slices([good.to_dict(), bad.to_dict()], None, "axial", Inputs())
    assert list(failed) == ["bad"] and broken in failed["bad"]
    assert len(slices) > 0 and len(slices.images) == 1


def test_history_records_failed_cases_per_plane(ray_local, demo_manifest, tmp_path):
    """run.json lists per plane the cases its workers could not load (none here)."""
    from stroke_ray.train import train

    run = train(tiny_train_config(demo_manifest, tmp_path / "run", planes=("axial",), epochs=1))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["planes"]["axial"]["failed_cases"] == {} == run["planes"]["axial"]["failed_cases"]


def test_more_workers_than_training_cases_is_named(tmp_path):
    """Each data-parallel worker needs a training case: the error says so before any work."""
    from stroke_ray.case import Case
    from stroke_ray.train import TrainError, _split

    cases = [Case(f"c{k}", {}) for k in range(4)]
    config = tiny_train_config(tmp_path / "m.csv", tmp_path / "run", val_fraction=0.25, min_cases=2)
    assert len(_split(replace(config, workers_per_plane=3), cases, 4, {})["train"]) == 3
    with pytest.raises(TrainError, match="--workers-per-plane 4 exceeds the 3 training"):
        _split(replace(config, workers_per_plane=4), cases, 4, {})


def test_ray_train_report_lines_are_quiet_in_the_worker_loop():
    import logging

    from ray.train.v2._internal.execution import context, storage

    from stroke_ray.train import quiet_ray_train_reports

    for module in (context, storage):
        module.logger.setLevel(logging.NOTSET)
    quiet_ray_train_reports()
    for module in (context, storage):
        assert not module.logger.isEnabledFor(logging.INFO)
        assert module.logger.isEnabledFor(logging.WARNING)
