"""The ``stroke-ray`` command: parse arguments into config dataclasses, then call the package.

Each command's parser sits beside its runner. Options come from the config fields
(:mod:`stroke_ray.config`, one declaration each); only options about the command line itself
(``--address``, ``--quiet``, ``--fail-on-error``) are declared here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path

from stroke_ray.config import (
    CohortConfig,
    DemoConfig,
    ExperimentConfig,
    PlanConfig,
    ReportConfig,
    SegmentConfig,
    TrainConfig,
)
from stroke_ray.options import add_options, defaults_of, from_args

__all__ = ["main", "build_parser", "COMMANDS"]

logger = logging.getLogger("stroke_ray")

# The demo schedule (minutes on a 2-core CPU), and the pretraining stand-in for ImageNet.
QUICKSTART_TRAINING = {
    "weights": "none",
    "epochs": 3,
    "freeze_epochs": 1,
    "max_steps_per_epoch": 25,
}
QUICKSTART_HELD_OUT = 0.25
PRETRAIN_TRAINING = {"epochs": 2, "max_steps_per_epoch": 20}
_ARM_FIELDS = ("cohort", "out", "weights")  # set per experiment arm
# quickstart's cohort: a manifest at the demo's voxel size (--spacing is training's)
_DEMO_FIXED = ("out_dir", "seed", "layout", "sequences", "spacing")


def _add_runtime(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: $RAY_ADDRESS, as set by `ray job submit`, "
        "else a local Ray instance on this machine)",
    )
    parser.add_argument("--quiet", action="store_true", help="log warnings only")


def _init_ray(args: argparse.Namespace) -> None:
    import ray

    ray.init(address=args.address or os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()


def _training(args: argparse.Namespace, **overrides) -> TrainConfig:
    return from_args(TrainConfig, args, progress_bars=sys.stderr.isatty(), **overrides)


def _print_planes(run: dict) -> None:
    for plane, values in run["planes"].items():
        print(f"{plane:>9}: best validation Dice {values['val_dice']:.4f}")


# --------------------------------------------------------------------------- demo


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `stroke-ray demo`."""
    add_options(parser, DemoConfig)


def run_demo(args: argparse.Namespace) -> int:
    """`stroke-ray demo`."""
    from stroke_ray.demo import generate_from_config

    print(generate_from_config(from_args(DemoConfig, args)))
    return 0


# --------------------------------------------------------------------------- cohort


def add_cohort_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `stroke-ray cohort`."""
    add_options(parser, CohortConfig)


def run_cohort(args: argparse.Namespace) -> int:
    """`stroke-ray cohort`: what a cohort path holds; optionally written as a manifest."""
    from stroke_ray.cohort import describe_cohort, scan_cohort, write_manifest

    config = from_args(CohortConfig, args)
    found = scan_cohort(config.path, config.storage_options)
    print("\n".join(describe_cohort(found)))
    if config.write_manifest:
        print(
            f"manifest: {write_manifest(found.cases, config.write_manifest, config.storage_options)}"
        )
    return 0


# --------------------------------------------------------------------------- train


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `stroke-ray train` (shared with jobs/train.py)."""
    add_options(parser, TrainConfig)
    _add_runtime(parser)


def run_train(args: argparse.Namespace) -> int:
    """`stroke-ray train`."""
    from stroke_ray.train import train

    _init_ray(args)
    _print_planes(train(_training(args)))
    print(f"run folder: {args.out}")
    return 0


# --------------------------------------------------------------------------- segment


def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `stroke-ray segment` (shared with jobs/segment.py)."""
    add_options(parser, SegmentConfig)
    parser.add_argument(
        "--fail-on-error", action="store_true", help="exit 1 when any case ends in error"
    )
    _add_runtime(parser)


def run_segment(args: argparse.Namespace) -> int:
    """`stroke-ray segment`."""
    from stroke_ray.progress import case_progress, print_summary
    from stroke_ray.segment import segment

    _init_ray(args)
    with case_progress() as progress:
        _, summary = segment(from_args(SegmentConfig, args), progress=progress)
    print_summary(summary)
    errors = summary["status_counts"]["error"]
    return 1 if errors and args.fail_on_error else 0


# --------------------------------------------------------------------------- quickstart


def add_quickstart_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `stroke-ray quickstart`: the demo cohort, then training options."""
    parser.add_argument(
        "out_dir",
        nargs="?",
        default="stroke-ray-demo",
        help="folder for cohort/, run/ and segmentation/ (default ./stroke-ray-demo)",
    )
    add_options(parser, DemoConfig, exclude=_DEMO_FIXED)
    add_options(parser, TrainConfig, exclude=("cohort", "out"), defaults=QUICKSTART_TRAINING)
    _add_runtime(parser)


def run_quickstart(args: argparse.Namespace) -> int:
    """`stroke-ray quickstart`: demo → split → train → segment → held-out and training Dice."""
    from stroke_ray.quickstart import quickstart

    _init_ray(args)
    training = _training(args, cohort="", out="")
    demo = from_args(
        DemoConfig,
        args,
        out_dir=str(Path(args.out_dir) / "cohort"),
        seed=training.seed,
        spacing=defaults_of(DemoConfig)["spacing"],
    )
    quickstart(
        Path(args.out_dir), demo=demo, held_out_fraction=QUICKSTART_HELD_OUT, training=training
    )
    return 0


# --------------------------------------------------------------------------- experiment


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `stroke-ray experiment`: the protocol, then every training option."""
    add_options(parser, ExperimentConfig)
    add_options(parser, TrainConfig, exclude=_ARM_FIELDS)
    _add_runtime(parser)


def run_experiment_command(args: argparse.Namespace) -> int:
    """`stroke-ray experiment`."""
    from stroke_ray.experiment import run_experiment
    from stroke_ray.io import join_uri, read_bytes

    _init_ray(args)
    training = _training(args, cohort=args.cohort, out=args.out, weights="none")
    summary = run_experiment(from_args(ExperimentConfig, args, training=training))
    print(read_bytes(join_uri(args.out, "table.md"), training.storage_options).decode())
    for weights, correlation in summary["qc_dice_agreement_correlation"].items():
        if correlation is not None:
            print(
                f"{weights}: correlation of fused Dice with plane agreement r = {correlation:.3f}"
            )
    return 0


# --------------------------------------------------------------------------- pretrain-encoder


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `stroke-ray pretrain-encoder`."""
    parser.add_argument("out_file", help="where to write the encoder state dict (.pt)")
    parser.add_argument(
        "--work-dir",
        default=None,
        help="folder for the pretraining cohort and run (default: beside OUT_FILE)",
    )
    demo_only_cases = [item.name for item in fields(DemoConfig) if item.name != "cases"]
    add_options(parser, DemoConfig, exclude=demo_only_cases)
    add_options(parser, TrainConfig, exclude=(*_ARM_FIELDS, "planes"), defaults=PRETRAIN_TRAINING)
    _add_runtime(parser)


def run_pretrain(args: argparse.Namespace) -> int:
    """`stroke-ray pretrain-encoder`."""
    from stroke_ray.experiment import pretrain_encoder

    _init_ray(args)
    pretrain_encoder(
        args.out_file,
        work_dir=args.work_dir or f"{os.path.splitext(args.out_file)[0]}_pretraining",
        cases=args.cases,
        seed=1000 + args.seed,
        training=_training(args, cohort="", out=""),
    )
    print(args.out_file)
    return 0


# --------------------------------------------------------------------------- report


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `stroke-ray report`."""
    add_options(parser, ReportConfig)


def run_report(args: argparse.Namespace) -> int:
    """`stroke-ray report`."""
    from stroke_ray.report import write_report

    config = from_args(ReportConfig, args)
    print(
        write_report(
            config.out, config.html, max_cases=config.max_cases,
            storage_options=config.storage_options,
        )
    )  # fmt: skip
    return 0


# --------------------------------------------------------------------------- plan


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `stroke-ray plan`."""
    add_options(parser, PlanConfig)


def run_plan(args: argparse.Namespace) -> int:
    """`stroke-ray plan`: nodes and cost for N cases in T hours, from a throughput.json."""
    from stroke_ray.io import join_uri, read_json
    from stroke_ray.throughput import plan, plan_text

    config = from_args(PlanConfig, args)
    uri = config.throughput
    if not uri.endswith(".json"):
        uri = join_uri(uri, "throughput.json")
    measured = read_json(uri, config.storage_options)
    try:
        result = plan(measured, config.cases, config.hours, config.price_per_hour)
    except ValueError as err:
        logger.error("%s: %s", uri, err)
        return 2
    print(plan_text(result, measured.get("machine")))
    return 0


# --------------------------------------------------------------------------- the command

Adder = Callable[[argparse.ArgumentParser], None]
Runner = Callable[[argparse.Namespace], int]

COMMANDS: dict[str, tuple[Adder, Runner, str, str]] = {
    "demo": (
        add_demo_arguments, run_demo, "write the synthetic demo cohort",
        "Write a synthetic multi-sequence stroke MRI cohort (T1, T2, FLAIR, DWI, lesion masks) "
        "and its manifest.csv.",
    ),
    "cohort": (
        add_cohort_arguments, run_cohort, "show what a cohort path holds; write it as a manifest",
        "Find the cases of a manifest or a cohort folder (ISLES 2015 SISS, BIDS, nnU-Net raw) "
        "and print the layout, the cases, the sequences per case, labelled and unlabelled "
        "cases, case problems and what was skipped and why; --write-manifest writes the cases "
        "as a manifest CSV that loads back to the same cases.",
    ),
    "train": (
        add_train_arguments, run_train, "train the three plane models with Ray Train",
        "Train the axial, coronal and sagittal Res-UNets concurrently with Ray Train; resumes "
        "an existing --out made with the same options.",
    ),
    "segment": (
        add_segment_arguments, run_segment, "segment a cohort with Ray Data",
        "Segment every case of a cohort with a trained run; writes masks, metrics.parquet and "
        "summary.json; resumes an existing --out made with the same run and fusion.",
    ),
    "quickstart": (
        add_quickstart_arguments, run_quickstart,
        "demo cohort → train → segment → summary, in one go",
        "Generate the demo cohort, hold out a quarter of its cases, train the three plane "
        "models on the rest (ResNet50 from scratch, a short schedule that finishes in minutes "
        "on a CPU), segment every case and print the held-out and the training cases' Dice "
        "apart.",
    ),
    "report": (
        add_report_arguments, run_report,
        "write a self-contained HTML report of a segmentation or experiment folder",
        "Write one HTML file (figures embedded, no network needed) with the run, the summary "
        "table, a sortable per-case table, Dice box plots, training curves, the QC scatter and "
        "FLAIR/DWI pictures of the worst cases with truth and prediction outlined.",
    ),
    "plan": (
        add_plan_arguments, run_plan,
        "nodes and cost to segment N cases in T hours, from a previous job's throughput.json",
        "Before spending anything: from the throughput.json that every segment job writes "
        "(its cases/h per node), how many nodes of that type segment --cases N in --hours T, "
        "how long they take and, with --price-per-hour (per node, as you pay it), the cost. "
        "Assumes throughput grows linearly with nodes of the same type.",
    ),
    "experiment": (
        add_experiment_arguments, run_experiment_command,
        "the paper's comparison: TL vs scratch, planes vs fusion modes",
        "Split the cohort by case (--test-fraction or --folds), train the three planes for "
        "every weight setting with the training options below, segment the held-out cases "
        "with every fusion mode and write metrics.parquet, table.csv and table.md.",
    ),
    "pretrain-encoder": (
        add_pretrain_arguments, run_pretrain,
        "pretrain an encoder on a separate synthetic cohort (stand-in for ImageNet offline)",
        "Train an axial Res-UNet on a synthetic cohort generated with another seed and save "
        "its encoder weights, to be given as --weights where ImageNet weights cannot be "
        "downloaded.",
    ),
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="stroke-ray",
        description="Ischemic stroke lesion segmentation on multi-sequence MRI with three "
        "plane Res-UNets, Ray Train and Ray Data.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, _, summary, description) in COMMANDS.items():
        add_arguments(subparsers.add_parser(name, help=summary, description=description))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `stroke-ray` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from stroke_ray.cohort import ManifestError
    from stroke_ray.fingerprint import DefinitionMismatchError
    from stroke_ray.model import WeightsError
    from stroke_ray.report import ReportError
    from stroke_ray.runs import RunNotReadyError
    from stroke_ray.train import TrainError

    known = (
        ManifestError, WeightsError, TrainError, ReportError, RunNotReadyError,
        DefinitionMismatchError,
    )  # fmt: skip
    try:
        return COMMANDS[args.command][1](args)
    except known as err:
        logger.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
