"""Data-parallel training: two gloo workers per plane end to end, killed and resumed.

The demo cohort's split leaves one validation case, so the second worker validates on none:
validation Dice must still pool both workers (one contributes zeros), not fail.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import ray_worker_pids, tiny_train_config

from stroke_ray.cohort import load_cohort
from stroke_ray.planes import brain_slice_indices
from stroke_ray.preprocess import prepare
from stroke_ray.volumes import read_case

pytestmark = pytest.mark.slow


def _kill_one_worker_after_checkpoint(storage: Path, killed: list[int]) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and not list(storage.glob("checkpoint_*")):
        time.sleep(0.2)
    pids = ray_worker_pids("RayTrainWorker")
    if pids:
        os.kill(pids[-1], signal.SIGKILL)
        killed.append(pids[-1])


def test_two_workers_per_plane_stay_in_sync_pool_validation_and_resume(
    ray_local, demo_manifest, tmp_path
):
    from stroke_ray.train import train

    out = tmp_path / "run"
    config = tiny_train_config(
        demo_manifest, out, planes=("axial",), epochs=3, workers_per_plane=2,
        cpus_per_worker=0.5, max_failures=2,
    )  # fmt: skip
    killed: list[int] = []
    killer = threading.Thread(
        target=_kill_one_worker_after_checkpoint, args=(out / "ray" / "axial", killed)
    )
    killer.start()
    run = train(config)
    killer.join()
    assert killed, "no training worker was killed"

    history = pd.read_parquet(out / "history.parquet").sort_values("epoch")
    assert history["epoch"].tolist() == [0, 1, 2]  # resumed from the checkpoint, nothing redone
    assert history["replicas_in_sync"].all()  # DDP kept both workers' weights identical

    split = json.loads((out / "run.json").read_text())["split"]
    assert len(split["val"]) == 1  # so the second worker had no validation case
    cases = {case.case_id: case for case in load_cohort(str(demo_manifest))}
    expected = sum(
        len(brain_slice_indices(prepare(read_case(cases[c])).brain, "axial")) for c in split["val"]
    )
    assert (history["val_slices"] == expected).all()
    assert 0.0 <= run["planes"]["axial"]["val_dice"] <= 1.0
