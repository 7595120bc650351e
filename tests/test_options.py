"""Tests for stroke_ray.options (argparse options from config dataclass fields) and for the CLI
built with it: every default is declared once, on its config field."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, replace

import pytest

from stroke_ray import cli
from stroke_ray.config import (
    PLANES,
    DemoConfig,
    ExperimentConfig,
    ModelConfig,
    ReportConfig,
    SegmentConfig,
    TrainConfig,
)
from stroke_ray.options import add_options, defaults_of, from_args, option


@dataclass(frozen=True)
class Inner:
    depth: int = option("network depth", default=3)
    widths: tuple[int, ...] = option("two widths", default=(8, 4), nargs=2, metavar="W")


@dataclass(frozen=True)
class Outer:
    name: str = option("a required name")
    inner: Inner = field(default_factory=Inner)
    verbose: bool = option("talk more", default=False)
    cache: bool = option("keep a cache", default=True)
    ratio: float | None = option("an optional ratio", default=None)
    tags: tuple[str, ...] = option("some tags", default=("a",), choices=("a", "b", "c"))
    limit: int = option("a limit", default=10, flag="--max-limit")
    hidden: int = 7  # no help: not an option


def _parser(cls=Outer, **kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test")
    add_options(parser, cls, **kwargs)
    return parser


def _parse(argv: list[str], cls=Outer, **kwargs):
    return from_args(cls, _parser(cls, **kwargs).parse_args(argv))


def test_defaults_and_required_fields():
    assert _parse(["--name", "x"]) == Outer(name="x")
    with pytest.raises(SystemExit):
        _parser().parse_args([])  # --name is required
    with pytest.raises(SystemExit):
        _parser(TrainConfig).parse_args(["--cohort", "c"])  # so is --out


def test_nested_config_is_flattened():
    parsed = _parse(["--name", "x", "--depth", "5", "--widths", "16", "2"])
    assert parsed.inner == Inner(depth=5, widths=(16, 2))
    assert isinstance(parsed.inner.widths, tuple)
    channels = ["--decoder-channels", "16", "8", "8", "4", "4"]
    train = _parse(["--cohort", "c", "--out", "o", "--encoder", "resnet18", *channels], TrainConfig)
    assert train.model == ModelConfig(encoder_name="resnet18", decoder_channels=(16, 8, 8, 4, 4))


def test_tuples_take_their_number_of_values():
    assert _parse(["--name", "x", "--tags", "b", "c"]).tags == ("b", "c")
    with pytest.raises(SystemExit):
        _parser().parse_args(["--name", "x", "--widths", "1"])  # nargs=2
    with pytest.raises(SystemExit):
        _parser().parse_args(["--name", "x", "--tags", "z"])  # not a choice
    planes = _parse(["--cohort", "c", "--out", "o", "--planes", "axial", "sagittal"], TrainConfig)
    assert planes.planes == ("axial", "sagittal")
    weights = ["--plane-weights", "0.5", "0.25", "0.25"]
    segment = _parse(["--cohort", "c", "--model", "m", "--out", "o", *weights], SegmentConfig)
    assert segment.plane_weights == (0.5, 0.25, 0.25)
    assert segment.weights_by_plane == {"axial": 0.5, "coronal": 0.25, "sagittal": 0.25}


def test_bool_flags():
    assert _parse(["--name", "x"]).verbose is False
    assert _parse(["--name", "x", "--verbose"]).verbose is True
    assert _parse(["--name", "x"]).cache is True
    assert _parse(["--name", "x", "--no-cache"]).cache is False
    with pytest.raises(SystemExit):
        _parser().parse_args(["--name", "x", "--no-verbose"])  # a False default: store_true


def test_types_flags_and_fields_without_help():
    parsed = _parse(["--name", "x", "--ratio", "0.5", "--max-limit", "3"])
    assert parsed.ratio == 0.5 and parsed.limit == 3
    assert _parse(["--name", "x"]).ratio is None
    parser = _parser()
    assert "--hidden" not in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "x", "--hidden", "3"])


def test_from_args_overrides_and_missing_options_keep_defaults():
    args = argparse.Namespace(name="x", depth=1)
    assert from_args(Outer, args) == Outer(name="x", inner=Inner(depth=1))
    assert from_args(Outer, args, name="y", hidden=9) == Outer(
        name="y", inner=Inner(depth=1), hidden=9
    )


def test_exclude():
    parser = _parser(exclude=("name", "depth"))
    parsed = from_args(Outer, parser.parse_args([]), name="given")
    assert parsed == Outer(name="given")
    assert "--depth" not in parser.format_help()


def test_defaults_override_the_field_default_and_show_in_help():
    parser = _parser(TrainConfig, defaults={"epochs": 3, "weights": "none"})
    config = from_args(TrainConfig, parser.parse_args(["--cohort", "c", "--out", "o"]))
    assert config == TrainConfig(cohort="c", out="o", epochs=3, weights="none")
    text = " ".join(parser.format_help().split())
    assert "training epochs (default 3)" in text
    assert "(default none)" in text and "(default imagenet)" not in text
    plain = " ".join(_parser(TrainConfig).format_help().split())
    assert "training epochs (default 10)" in plain
    assert "(default 256 128 64 32 16)" in plain  # tuples shown as their values
    assert "(default None)" not in plain and "(default False)" not in plain


def test_mutable_defaults_are_refused():
    with pytest.raises(TypeError, match="mutable"):
        option("bad", default=[1, 2])


def test_defaults_of():
    defaults = defaults_of(TrainConfig)
    assert "cohort" not in defaults and "out" not in defaults
    assert defaults["epochs"] == 10 and defaults["model"] == ModelConfig()
    assert defaults["planes"] == PLANES


def test_storage_options_are_json():
    args = ["--cohort", "c", "--out", "o", "--storage-options", '{"anon": true}']
    assert _parse(args, TrainConfig).storage_options == {"anon": True}
    with pytest.raises(SystemExit):
        _parse(["--cohort", "c", "--out", "o", "--storage-options", "[1]"], TrainConfig)


# --------------------------------------------------------------------------- the CLI


def _cli(argv: list[str]) -> argparse.Namespace:
    return cli.build_parser().parse_args(argv)


def test_cli_repeats_no_training_default():
    """`stroke-ray train` with only the required options is the config's own defaults."""
    args = _cli(["train", "--cohort", "c", "--out", "o"])
    assert from_args(TrainConfig, args) == TrainConfig(cohort="c", out="o")


def test_cli_repeats_no_segment_default():
    args = _cli(["segment", "--cohort", "c", "--model", "m", "--out", "o"])
    assert from_args(SegmentConfig, args) == SegmentConfig(cohort="c", model="m", out="o")
    assert args.fail_on_error is False and args.address is None


def test_cli_repeats_no_demo_report_or_experiment_default():
    assert from_args(DemoConfig, _cli(["demo", "d"])) == DemoConfig(out_dir="d")
    assert from_args(ReportConfig, _cli(["report", "r"])) == ReportConfig(out="r")
    args = _cli(["experiment", "--cohort", "c", "--out", "o"])
    assert from_args(ExperimentConfig, args) == ExperimentConfig(cohort="c", out="o")
    # the arms share the training options; their cohort, folder and weights are set per arm
    training = from_args(TrainConfig, args, cohort="c", out="o", weights="none")
    assert training == TrainConfig(cohort="c", out="o", weights="none")


def test_cli_schedules_of_quickstart_and_pretraining_are_the_only_other_defaults():
    args = _cli(["quickstart"])
    training = from_args(TrainConfig, args, cohort="", out="")
    expected = replace(TrainConfig(cohort="", out=""), **cli.QUICKSTART_TRAINING)
    assert training == expected
    assert args.cases == DemoConfig(out_dir="x").cases and args.out_dir == "stroke-ray-demo"
    args = _cli(["pretrain-encoder", "enc.pt"])
    training = from_args(TrainConfig, args, cohort="", out="")
    assert training == replace(TrainConfig(cohort="", out=""), **cli.PRETRAIN_TRAINING)


def test_cli_options_are_the_config_fields():
    """Every documented TrainConfig field is an option of `train`, under its own dest."""
    args = vars(_cli(["train", "--cohort", "c", "--out", "o"]))
    documented = {
        f.name
        for cls in (TrainConfig, ModelConfig)
        for f in dataclasses.fields(cls)
        if "help" in f.metadata
    }
    assert documented <= set(args)
    assert set(args) - documented == {"command", "address", "quiet"}
