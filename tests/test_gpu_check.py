"""The prepared GPU check runs end to end in its CPU smoke mode (train, kill, resume, segment)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_mode_trains_resumes_and_segments(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--smoke", "--results-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    payload = json.loads((tmp_path / "gpu" / "smoke" / "gpu_check.json").read_text())
    training = payload["training"]
    assert training["killed_worker_pids"] and training["every_epoch_once"]
    assert [row["precision"] for row in payload["segmentation"]] == ["bf16", "fp32"]
    for row in payload["segmentation"]:
        assert row["cases"] == 2 and row["slices"] > 0
        assert row["ratio_job_over_bare"] > 0 and row["job_seconds_per_case"] > 0
    assert payload["machine"]["cpu_flags"] is not None
