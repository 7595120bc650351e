"""Credentials given as storage options never reach run.json or segment.json."""

from __future__ import annotations

import json

from stroke_ray.segment import SegmentConfig, _public_settings
from stroke_ray.train import TrainConfig

SECRET = "SECRET-do-not-write-me"


def test_train_config_written_to_run_json_has_no_credentials():
    config = TrainConfig(
        cohort="s3://b/m.csv", out="s3://b/run", storage_options={"secret": SECRET}
    )
    assert SECRET not in json.dumps(config.public_dict())
    assert SECRET not in repr(config)


def test_segment_settings_written_to_segment_json_have_no_credentials():
    config = SegmentConfig(cohort="c", model="m", out="o", storage_options={"secret": SECRET})
    settings = _public_settings(config, {"run_id": "r", "planes": {"axial": {}}})
    assert SECRET not in json.dumps(settings)
    assert SECRET not in repr(config)
