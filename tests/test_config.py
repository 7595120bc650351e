"""Tests for stroke_ray.config: weight settings, public (credential-free) dicts, frozen configs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

import pytest

from stroke_ray.config import (
    FUSION_MODES,
    PLANES,
    ExperimentConfig,
    ModelConfig,
    SegmentConfig,
    TrainConfig,
    describe_weights,
    is_scratch,
    parse_storage_options,
    public_dict,
    weights_label,
)

SECRET = {"key": "k", "secret": "SECRET-xyz", "client_kwargs": {"endpoint_url": "http://s3"}}


@pytest.mark.parametrize("weights", [None, "", "none", "scratch"])
def test_scratch_settings(weights):
    assert is_scratch(weights)
    assert weights_label(weights) == "scratch"
    assert "random initialisation (trained from scratch)" in describe_weights(weights)
    assert describe_weights(weights).startswith(weights or "none")


@pytest.mark.parametrize("weights", ["imagenet", "/w/enc.pt", "s3://b/enc.pth"])
def test_pretrained_settings(weights):
    assert not is_scratch(weights)
    assert "transfer learning" in describe_weights(weights)
    assert "scratch" not in describe_weights(weights)


def test_weights_labels():
    assert weights_label("imagenet") == "imagenet"
    assert weights_label("s3://bucket/enc/resnet50_v2.pt") == "pretrained-resnet50_v2"
    assert weights_label("/w/my_encoder.safetensors") == "pretrained-my_encoder"
    assert weights_label("/w/folder/") == "pretrained-folder"
    assert describe_weights("imagenet").startswith("imagenet: ImageNet-pretrained encoder")
    assert describe_weights("/w/enc.pt") == (
        "/w/enc.pt: encoder weights loaded from this file (transfer learning)"
    )


def test_train_config_scratch_property():
    assert TrainConfig(cohort="c", out="o", weights="none").scratch
    assert not TrainConfig(cohort="c", out="o").scratch  # imagenet by default


def test_public_dict_has_no_credentials():
    config = TrainConfig(
        cohort="c", out="o", model=ModelConfig(encoder_name="resnet18"), storage_options=SECRET
    )
    values = public_dict(config)
    assert "storage_options" not in values
    assert "SECRET-xyz" not in json.dumps(values) and "SECRET-xyz" not in repr(config)
    assert values["model"] == {
        "encoder_name": "resnet18",
        "decoder_channels": [256, 128, 64, 32, 16],
        "encoder_depth": 5,
        "in_channels": 4,
    }
    assert values["sequences"] == ["t1", "t2", "flair", "dwi"] and values["reference"] == "flair"
    assert values["planes"] == list(PLANES)
    assert values["cohort"] == "c" and values["epochs"] == 10 and values["use_gpu"] is False
    expected = {f.name for f in dataclasses.fields(TrainConfig)} - {"storage_options"}
    assert set(values) == expected
    segment = public_dict(
        SegmentConfig(
            cohort="c", model="m", out="o", plane_weights=(1.0, 2.0, 3.0), storage_options=SECRET
        )
    )
    assert "storage_options" not in segment and segment["plane_weights"] == [1.0, 2.0, 3.0]
    assert json.loads(json.dumps(segment)) == segment


def test_public_dict_of_an_experiment_drops_nested_credentials():
    training = TrainConfig(cohort="c", out="o", storage_options=SECRET)
    experiment = ExperimentConfig(cohort="c", out="e", training=training)
    values = public_dict(experiment)
    assert "SECRET-xyz" not in json.dumps(values)
    assert "storage_options" not in values["training"]
    assert values["weights"] == ["imagenet", "none"]
    assert experiment.storage_options == SECRET  # one set for the whole experiment
    assert ExperimentConfig(cohort="c", out="e").storage_options is None


def test_configs_are_frozen():
    config = TrainConfig(cohort="c", out="o")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.encoder_name = "x"  # type: ignore[misc]
    assert dataclasses.replace(config, epochs=3).epochs == 3 and config.epochs == 10


def test_model_config_round_trip():
    config = ModelConfig(encoder_name="resnet18", decoder_channels=(16, 8, 8, 4, 4))
    values = config.to_dict()
    assert values["decoder_channels"] == [16, 8, 8, 4, 4]
    assert ModelConfig.from_dict(json.loads(json.dumps(values))) == config


def test_segment_weights_by_plane():
    assert SegmentConfig(cohort="c", model="m", out="o").weights_by_plane is None
    config = SegmentConfig(cohort="c", model="m", out="o", plane_weights=(0.5, 0.25, 0.25))
    assert config.weights_by_plane == {"axial": 0.5, "coronal": 0.25, "sagittal": 0.25}
    assert FUSION_MODES == ("majority", "weighted", "soft")


def test_parse_storage_options():
    assert parse_storage_options(None) is None and parse_storage_options("") is None
    assert parse_storage_options('{"anon": true}') == {"anon": True}
    with pytest.raises(argparse.ArgumentTypeError, match="not valid JSON"):
        parse_storage_options("{nope")
    with pytest.raises(argparse.ArgumentTypeError, match="JSON object"):
        parse_storage_options("[1, 2]")


def test_config_imports_neither_torch_nor_ray():
    """`stroke-ray --help` stays fast: the configs and the CLI parser need no heavy import."""
    code = (
        "import sys, stroke_ray.config, stroke_ray.cli; stroke_ray.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"


def test_spacing_setting_accepts_auto_source_or_three_sizes():
    from stroke_ray.config import spacing_setting

    assert TrainConfig.spacing == ("auto",)
    assert spacing_setting(("auto",)) == "auto" and spacing_setting("source") == "source"
    assert spacing_setting(("1", "1", "5")) == (1.0, 1.0, 5.0)
    assert spacing_setting((1.0, 1.0, 2.5)) == (1.0, 1.0, 2.5)
    for bad in (("auto", "1"), (1.0, 2.0), (1.0, 0.0, 1.0), ("x",), ()):
        with pytest.raises(ValueError, match="spacing"):
            spacing_setting(bad)


def test_issue15_training_flags():
    from stroke_ray.cli import build_parser
    from stroke_ray.options import from_args

    parser = build_parser()
    base = ["train", "--cohort", "c", "--out", "o"]
    config = from_args(TrainConfig, parser.parse_args(base))
    assert config.augment and config.spacing == ("auto",)
    assert config.checkpoint_metric == "dice_lesion_f1"
    args = parser.parse_args([*base, "--no-augment", "--spacing", "1", "1", "5"])
    config = from_args(TrainConfig, args)
    assert not config.augment and config.spacing == (1.0, 1.0, 5.0)
    assert from_args(TrainConfig, parser.parse_args([*base, "--spacing", "source"])).spacing == (
        "source",
    )
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--spacing", "-1"])
    segment = build_parser().parse_args(["segment", "--cohort", "c", "--model", "m", "--out", "o"])
    assert segment.min_lesion_ml is None
