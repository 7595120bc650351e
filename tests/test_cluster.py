"""Several nodes: a head that runs no work (as a CPU head does) and two worker nodes, made on
this machine with ``ray.cluster_utils.Cluster``. The cohort, the run folder and the outputs
live on the local S3 server; drivers run as ``ray job submit`` runs them (a separate process,
an empty working directory), so nothing may depend on the driver's disk. Worker nodes are
removed mid-job: segmentation finishes with each case exactly once, training resumes the
plane from its checkpoint in S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import nibabel as nib
import pandas as pd
import psutil
import pytest
from helpers import TINY_MODEL

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    """A head with no CPUs and two 3-CPU worker nodes on this machine: when one is lost, the
    other holds both model actors (a CPU each) and keeps a CPU for reading, writing and Ray's
    reconstruction of the blocks lost with the node."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False},
    )
    workers = [cluster.add_node(num_cpus=3) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    cluster.shutdown()


@pytest.fixture
def s3_cohort(demo_manifest, s3_bucket, s3_options) -> str:
    """The demo cohort copied to S3; its manifest URI."""
    import s3fs

    s3fs.S3FileSystem(**s3_options).put(
        str(demo_manifest.parent) + "/", f"{s3_bucket}/cohort/", recursive=True
    )
    return f"{s3_bucket}/cohort/manifest.csv"


def _driver(cluster, tmp_path, *args: str) -> subprocess.Popen:
    """`python -m stroke_ray.cli ARGS` against the cluster, from an empty working folder."""
    cwd = tmp_path / f"driver-{time.monotonic_ns()}"
    cwd.mkdir()
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    return subprocess.Popen(
        [sys.executable, "-m", "stroke_ray.cli", *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _finish(process: subprocess.Popen, timeout_s: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, output[-4000:]
    return output


def _train_args(cohort: str, out: str, options: dict, *extra: str) -> list[str]:
    return [
        "train", "--cohort", cohort, "--out", out, "--weights", "none",
        "--encoder", TINY_MODEL["model"].encoder_name,
        "--decoder-channels", *map(str, TINY_MODEL["model"].decoder_channels),
        "--batch-size", "4", "--max-steps-per-epoch", "1", "--cpus-per-worker", "0.5",
        "--storage-options", json.dumps(options), "--quiet", *extra,
    ]  # fmt: skip


def _node_running(workers, title: str):
    """The worker node whose raylet runs a process with ``title`` in its command line."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in workers}
    for process in psutil.process_iter(["cmdline"]):
        if title not in " ".join(process.info["cmdline"] or []):
            continue
        for parent in process.parents():
            if parent.pid in raylets:
                return raylets[parent.pid]
    return None


def _remove_node_when(
    cluster, workers, title: str, ready: Callable[[], bool], driver: subprocess.Popen, removed: list
):
    """While the driver runs: once ``ready()``, remove the worker node running ``title``."""
    while driver.poll() is None:
        if ready():
            node = _node_running(workers, title)
            if node is not None:
                cluster.remove_node(node, allow_graceful=False)
                removed.append(node.node_id)
                return
        time.sleep(0.2)


def _listed(fs, pattern: str) -> bool:
    """Whether anything matches ``pattern`` now (s3fs caches listings: look afresh)."""
    fs.invalidate_cache()
    return bool(fs.glob(pattern))


def _run_losing_a_node(
    cluster, workers, tmp_path, title: str, ready: Callable[[], bool], *args: str
) -> None:
    """Run a driver with ``args``; once ``ready()``, remove the worker node running ``title``."""
    removed: list[str] = []
    driver = _driver(cluster, tmp_path, *args)
    remover = threading.Thread(
        target=_remove_node_when, args=(cluster, workers, title, ready, driver, removed)
    )
    remover.start()
    _finish(driver)
    remover.join()
    assert removed, "no worker node was removed"


def test_train_then_segment_on_s3_with_a_cpu_head(
    cluster, s3_cohort, s3_bucket, s3_options, tmp_path
):
    import s3fs

    cluster, _ = cluster
    fs = s3fs.S3FileSystem(**s3_options)
    run = f"{s3_bucket}/runs/r1"
    _finish(_driver(cluster, tmp_path, *_train_args(s3_cohort, run, s3_options, "--epochs", "2")))
    record = json.loads(fs.cat(f"{run}/run.json"))
    assert record["status"] == "finished" and sorted(record["planes"]) == [
        "axial",
        "coronal",
        "sagittal",
    ]
    out = f"{s3_bucket}/seg/r1"
    _finish(
        _driver(
            cluster, tmp_path, "segment", "--cohort", s3_cohort, "--model", run, "--out", out,
            "--storage-options", json.dumps(s3_options), "--batch-size", "8", "--quiet",
        )
    )  # fmt: skip
    with fs.open(f"{out}/metrics.parquet", "rb") as handle:
        metrics = pd.read_parquet(handle)
    assert (metrics["status"] == "ok").all() and metrics["case_id"].nunique() == 5
    assert not list(tmp_path.rglob("*.parquet")) and not list(tmp_path.rglob("*.nii.gz"))


def test_node_lost_mid_segmentation_loses_no_case(
    cluster, trained_run, s3_cohort, s3_bucket, s3_options, demo_manifest, tmp_path
):
    import s3fs

    cluster, workers = cluster
    fs = s3fs.S3FileSystem(**s3_options)
    model = f"{s3_bucket}/runs/trained"
    fs.put(str(trained_run) + "/", model + "/", recursive=True)
    manifest = pd.read_csv(demo_manifest)
    copies = pd.concat(
        [manifest.assign(case_id=manifest.case_id + f"_{k}") for k in range(4)], ignore_index=True
    )
    for column in ("t1", "t2", "flair", "dwi", "label"):
        copies[column] = f"{s3_bucket}/cohort/" + copies[column]
    cohort = f"{s3_bucket}/cohort/many.csv"
    fs.pipe(cohort, copies.to_csv(index=False).encode())
    out = f"{s3_bucket}/seg/lost"
    _run_losing_a_node(
        cluster, workers, tmp_path, "PlanePredictor", lambda: _listed(fs, f"{out}/cases/*.parquet"),
        "segment", "--cohort", cohort, "--model", model, "--out", out,
        "--storage-options", json.dumps(s3_options), "--batch-size", "8", "--num-actors", "2",
    )  # fmt: skip
    with fs.open(f"{out}/metrics.parquet", "rb") as handle:
        metrics = pd.read_parquet(handle)
    assert sorted(metrics["case_id"].unique()) == sorted(copies["case_id"])
    assert metrics.groupby("case_id").size().eq(4).all() and (metrics["status"] == "ok").all()
    for case_id in copies["case_id"]:
        image = nib.Nifti1Image.from_bytes(
            __import__("gzip").decompress(fs.cat(f"{out}/masks/{case_id}.nii.gz"))
        )
        assert (
            image.shape
            == nib.load(demo_manifest.parent / "demo_000" / "demo_000_flair.nii.gz").shape
        )


def test_node_lost_mid_training_resumes_from_s3_checkpoint(
    cluster, s3_cohort, s3_bucket, s3_options, tmp_path
):
    import s3fs

    cluster, workers = cluster
    fs = s3fs.S3FileSystem(**s3_options)
    run = f"{s3_bucket}/runs/lost"
    _run_losing_a_node(
        cluster, workers, tmp_path, "RayTrainWorker",
        lambda: _listed(fs, f"{run}/ray/axial/checkpoint_*"),
        *_train_args(s3_cohort, run, s3_options, "--epochs", "4", "--planes", "axial", "--max-failures", "3"),
    )  # fmt: skip
    with fs.open(f"{run}/history.parquet", "rb") as handle:
        history = pd.read_parquet(handle)
    assert history["epoch"].tolist() == [0, 1, 2, 3]  # each epoch once: resumed, not redone
    assert json.loads(fs.cat(f"{run}/run.json"))["status"] == "finished"
