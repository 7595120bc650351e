"""`ray job submit` of jobs/train.py and jobs/segment.py against a local `ray start --head`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from helpers import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A separate Ray head node on free ports; yields the dashboard (job API) address."""
    ports = {
        "--port": free_port(),
        "--dashboard-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--metrics-export-port": free_port(),
        "--ray-client-server-port": free_port(),
    }
    command = [RAY, "start", "--head", "--block", "--num-cpus=2", "--include-dashboard=true"]
    command += [f"{flag}={port}" for flag, port in ports.items()]
    log = open(tmp_path_factory.mktemp("head") / "head.log", "w")  # noqa: SIM115
    # the job's `python` must be this environment's, as on a cluster whose nodes installed the package
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    head = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    address = f"http://127.0.0.1:{ports['--dashboard-port']}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except OSError:
            time.sleep(1)
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    head.wait(timeout=60)
    log.close()
    current = Path("/tmp/ray/ray_current_cluster")  # what `ray stop` would remove
    if current.exists() and current.read_text().strip().endswith(f":{ports['--port']}"):
        current.unlink()


def _submit(address: str, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    command = [
        RAY,
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--",
        "python",
        script,
        *args,
    ]
    for _ in range(10):  # the job agent may need a few seconds after the head is up
        result = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        if "No available agent" not in result.stdout + result.stderr:
            return result
        time.sleep(3)
    return result


def test_train_and_segment_jobs(ray_head, demo_manifest, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "seg"
    tiny = [
        "--encoder",
        "resnet18",
        "--decoder-channels",
        "16",
        "8",
        "8",
        "4",
        "4",
        "--weights",
        "none",
    ]
    trained = _submit(
        ray_head, "jobs/train.py", "--cohort", str(demo_manifest), "--out", str(run_dir),
        *tiny, "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "4",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "succeeded" in trained.stdout + trained.stderr
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "finished" and set(run["planes"]) == {"axial", "coronal", "sagittal"}

    segmented = _submit(
        ray_head,
        "jobs/segment.py",
        "--cohort",
        str(demo_manifest),
        "--model",
        str(run_dir),
        "--out",
        str(out),
    )
    assert segmented.returncode == 0, segmented.stdout[-3000:] + segmented.stderr[-3000:]
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert len(metrics) == 4 * len(pd.read_csv(demo_manifest))
