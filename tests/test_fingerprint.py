"""Tests for stroke_ray.fingerprint and the definitions it compares: a run folder or a
segmentation folder resumes only when asked for the same thing, and says what differs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from stroke_ray.config import ModelConfig, SegmentConfig, TrainConfig
from stroke_ray.fingerprint import DefinitionMismatchError, differences, ensure_same_definition
from stroke_ray.io import write_json, write_parquet
from stroke_ray.runs import DEFINING_OPTIONS, history_uri, previous_run, run_definition
from stroke_ray.segment import _prepare_out, segment_definition

SPLIT = {"train": ["a", "b", "c"], "val": ["d"]}
RUN = {
    "run_id": "run1",
    "definition": {"epochs": 2},
    "planes": {"axial": {"val_dice": 0.7}, "coronal": {"val_dice": 0.5}},
}


def test_differences_name_each_changed_key():
    recorded = {"epochs": 2, "lr": 0.001, "model": {"encoder_name": "resnet50"}, "gone": 1}
    requested = {"epochs": 3, "lr": 0.001, "model": {"encoder_name": "resnet18"}, "new": "x"}
    assert differences(recorded, requested) == [
        "epochs: 2 -> 3",
        "gone: 1 -> null",
        'model: {"encoder_name": "resnet50"} -> {"encoder_name": "resnet18"}',
        'new: null -> "x"',
    ]


def test_differences_compare_json_values():
    """A tuple asked for equals the list JSON recorded; key order does not matter."""
    recorded = json.loads(json.dumps({"planes": ["axial"], "model": {"b": 1, "a": [1, 2]}}))
    assert differences(recorded, {"model": {"a": (1, 2), "b": 1}, "planes": ("axial",)}) == []
    assert differences({"x": 1}, {"x": 1.5}) == ["x: 1 -> 1.5"]


def test_long_values_are_shortened():
    (line,) = differences({"split": list(range(100))}, {"split": []})
    assert line.startswith("split: [0, 1, 2") and "... -> []" in line and len(line) < 140


def test_ensure_same_definition():
    ensure_same_definition("/runs/r", {"epochs": 2}, {"epochs": 2}, "--restart")
    with pytest.raises(
        DefinitionMismatchError,
        match=r"/runs/r .* differs in epochs: 2 -> 3; "
        r"lr: 0.1 -> 0.2\. Rerun with --restart",
    ):
        ensure_same_definition(
            "/runs/r", {"epochs": 2, "lr": 0.1}, {"epochs": 3, "lr": 0.2}, "--restart"
        )


def test_a_folder_without_a_recorded_definition_is_not_resumed():
    with pytest.raises(DefinitionMismatchError, match="without a recorded definition.*--overwrite"):
        ensure_same_definition("/seg", None, {"fusion": "majority"}, "--overwrite")


# Options about where data lives and how a run is executed; every other option defines it.
NOT_DEFINING = {
    "cohort", "out", "planes", "use_gpu", "gpus_per_worker", "cpus_per_worker", "max_failures",
    "restart", "min_cases", "progress_bars", "storage_options",
}  # fmt: skip


def test_every_training_option_either_defines_a_run_or_only_runs_it():
    fields = {item.name for item in dataclasses.fields(TrainConfig)}
    assert fields >= NOT_DEFINING
    assert set(DEFINING_OPTIONS) == fields - NOT_DEFINING


def test_run_definition_holds_what_shapes_the_models():
    config = TrainConfig(
        cohort="c",
        out="o",
        model=ModelConfig(encoder_name="resnet18"),
        epochs=4,
        storage_options={"secret": "s"},
    )
    definition = run_definition(config, SPLIT)
    assert set(definition) == {*DEFINING_OPTIONS, "split"}
    assert definition["model"]["encoder_name"] == "resnet18"
    assert definition["model"]["decoder_channels"] == [256, 128, 64, 32, 16]
    assert definition["epochs"] == 4 and definition["split"] == SPLIT
    json.dumps(definition)
    # where data lives and how it runs do not define a run
    for change in (
        {"cohort": "s3://b/c"},
        {"out": "other"},
        {"use_gpu": True},
        {"max_failures": 0},
        {"planes": ("axial",)},
        {"restart": True},
        {"storage_options": None},
    ):
        assert run_definition(replace(config, **change), SPLIT) == definition, change
    for change in (
        {"epochs": 5},
        {"weights": "none"},
        {"lr": 0.5},
        {"seed": 1},
        {"batch_size": 2},
        {"model": ModelConfig(encoder_name="resnet34")},
        {"max_steps_per_epoch": 3},
        {"sequences": ("dwi", "adc", "flair")},
        {"reference": "t1"},
        {"resample": True},
    ):
        changed = run_definition(replace(config, **change), SPLIT)
        assert differences(definition, changed), change
    assert differences(definition, run_definition(config, {"train": ["a"], "val": ["d"]}))


def test_previous_run(tmp_path: Path):
    run_dir = str(tmp_path / "run")
    run, history = previous_run(run_dir)
    assert run is None and history.empty
    write_json({"status": "running", "definition": {"epochs": 2}}, f"{run_dir}/run.json")
    run, history = previous_run(run_dir)
    assert run["definition"] == {"epochs": 2} and history.empty
    rows = pd.DataFrame([{"plane": "axial", "epoch": 0, "val_dice": 0.5}])
    write_parquet(rows, history_uri(run_dir))
    _, history = previous_run(run_dir)
    pd.testing.assert_frame_equal(history, rows)
    (tmp_path / "run" / "run.json").write_text("{not json")
    with pytest.raises(ValueError):
        previous_run(run_dir)  # unreadable is an error, not an empty run


def test_segment_definition():
    config = SegmentConfig(cohort="c", model="/runs/r", out="o", fusion="majority")
    definition = segment_definition(config, RUN)
    assert definition == {
        "model": "/runs/r",
        "run_definition": {"epochs": 2},
        "planes": ["axial", "coronal"],
        "fusion": "majority",
        "plane_weights": None,
        "extra_fusions": [],
        "tta": False,
        "precision": "auto",
        "layout": "flat",
    }
    weighted = segment_definition(replace(config, fusion="weighted"), RUN)
    assert weighted["plane_weights"] == {"axial": 0.7, "coronal": 0.5}  # the run's val Dice
    given = replace(config, extra_fusions=("weighted",), plane_weights=(1.0, 2.0, 3.0))
    assert segment_definition(given, RUN)["plane_weights"] == {
        "axial": 1.0,
        "coronal": 2.0,
        "sagittal": 3.0,
    }
    # how fast it runs does not define the masks
    for change in ({"batch_size": 2}, {"num_actors": 3}, {"use_gpu": True}, {"cohort": "x"}):
        assert segment_definition(replace(config, **change), RUN) == definition
    # where the masks go does
    assert segment_definition(replace(config, layout="bids"), RUN)["layout"] == "bids"


def test_segmentation_folder_refuses_another_definition(tmp_path: Path):
    config = SegmentConfig(
        cohort="c", model="/runs/r", out=str(tmp_path / "seg"), fusion="majority"
    )
    assert _prepare_out(config, RUN) == set()
    recorded = json.loads((tmp_path / "seg" / "segment.json").read_text())
    assert recorded["definition"] == segment_definition(config, RUN)
    assert recorded["run_id"] == "run1" and recorded["fusion"] == "majority"
    assert recorded["warnings"] and "2 plane(s)" in recorded["warnings"][0]
    assert _prepare_out(replace(config, batch_size=4), RUN) == set()  # same definition
    recorded = json.loads((tmp_path / "seg" / "segment.json").read_text())
    assert recorded["batch_size"] == 4

    with pytest.raises(DefinitionMismatchError, match=r"fusion: \"majority\" -> \"soft\""):
        _prepare_out(replace(config, fusion="soft"), RUN)
    other_run = {**RUN, "definition": {"epochs": 3}}
    with pytest.raises(DefinitionMismatchError, match="run_definition"):
        _prepare_out(config, other_run)
    assert json.loads((tmp_path / "seg" / "segment.json").read_text()) == recorded

    _prepare_out(replace(config, fusion="soft", overwrite=True), RUN)
    rewritten = json.loads((tmp_path / "seg" / "segment.json").read_text())
    assert rewritten["definition"]["fusion"] == "soft"


def test_segmentation_folder_of_an_older_version_is_refused(tmp_path: Path):
    (tmp_path / "seg").mkdir()
    (tmp_path / "seg" / "segment.json").write_text(json.dumps({"fusion": "majority"}))
    config = SegmentConfig(cohort="c", model="/runs/r", out=str(tmp_path / "seg"))
    with pytest.raises(DefinitionMismatchError, match="without a recorded definition"):
        _prepare_out(config, RUN)
