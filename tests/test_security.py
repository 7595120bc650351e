"""Credentials given as storage options never reach run.json or segment.json."""

from __future__ import annotations

import json

from stroke_ray.config import SegmentConfig, TrainConfig, public_dict
from stroke_ray.runs import run_definition
from stroke_ray.segment import _prepare_out

SECRET = "SECRET-do-not-write-me"


def test_train_config_written_to_run_json_has_no_credentials():
    config = TrainConfig(
        cohort="s3://b/m.csv", out="s3://b/run", storage_options={"secret": SECRET}
    )
    assert SECRET not in json.dumps(public_dict(config))
    assert "storage_options" not in public_dict(config)
    assert SECRET not in json.dumps(run_definition(config, {"train": ["a"], "val": ["b"]}))
    assert SECRET not in repr(config)


def test_segment_settings_written_to_segment_json_have_no_credentials(tmp_path):
    config = SegmentConfig(
        cohort="c", model="m", out=str(tmp_path / "out"), storage_options={"secret": SECRET}
    )
    assert SECRET not in json.dumps(public_dict(config))
    _prepare_out(config, {"run_id": "r", "planes": {"axial": {"val_dice": 0.5}}})
    written = (tmp_path / "out" / "segment.json").read_text()
    assert json.loads(written)["cohort"] == "c"  # the settings are there, the secret is not
    assert SECRET not in written and "storage_options" not in written
    assert SECRET not in repr(config)
