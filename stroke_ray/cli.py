"""The ``stroke-ray`` command: parse arguments, then call the package (nothing else here)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stroke_ray.fusion import FUSION_MODES
from stroke_ray.losses import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_LESION_WEIGHT
from stroke_ray.slices import DEFAULT_LESION_OVERSAMPLE

__all__ = ["main", "build_parser"]

logger = logging.getLogger("stroke_ray")

QUICKSTART_EPOCHS = 3  # the demo schedule: minutes on a 2-core CPU
QUICKSTART_STEPS_PER_EPOCH = 25


def _storage_options(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--storage-options is not valid JSON: {err.msg}") from err
    if not isinstance(values, dict):
        raise argparse.ArgumentTypeError("--storage-options must be a JSON object")
    return values


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-options",
        type=_storage_options,
        default=None,
        metavar="JSON",
        help="fsspec storage options for s3:// and other URIs, as a JSON object, e.g. "
        '\'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\'. Credentials are '
        "better left to the standard places (AWS_* environment variables, profiles); "
        "whatever is given here is never logged or written to outputs.",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: $RAY_ADDRESS, as set by `ray job submit`, "
        "else a local Ray instance on this machine)",
    )
    parser.add_argument("--quiet", action="store_true", help="log warnings only")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `stroke-ray train` (shared with jobs/train.py)."""
    parser.add_argument(
        "--cohort",
        required=True,
        help="manifest (CSV/Parquet) or ISLES-layout folder; local path or URI",
    )
    parser.add_argument(
        "--out", required=True, help="run folder to create or resume (local path or URI)"
    )
    _add_architecture(parser)
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="initial encoder weights: 'imagenet' (smp download), 'none' (train from scratch), "
        "or a path/URI of a checkpoint or encoder state dict (default imagenet)",
    )
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument(
        "--freeze-epochs",
        type=int,
        default=3,
        help="epochs with the pretrained encoder frozen before fine-tuning; ignored with --weights none (default 3)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="Adam learning rate, frozen phase and scratch (default 1e-3)",
    )
    parser.add_argument(
        "--finetune-lr",
        type=float,
        default=1e-4,
        help="learning rate once the encoder is unfrozen (default 1e-4)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="slices per training step per worker (default 8)"
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help=f"weight of the cross-entropy term (default {DEFAULT_ALPHA})",
    )
    parser.add_argument(
        "--beta",
        type=float,
        default=DEFAULT_BETA,
        help=f"weight of the Dice term (default {DEFAULT_BETA})",
    )
    parser.add_argument(
        "--lesion-weight",
        type=float,
        default=DEFAULT_LESION_WEIGHT,
        help=f"cross-entropy weight of the lesion class, background is 1 (default {DEFAULT_LESION_WEIGHT})",
    )
    parser.add_argument(
        "--lesion-oversample",
        type=float,
        default=DEFAULT_LESION_OVERSAMPLE,
        help=f"how much more often slices with lesion are drawn (default {DEFAULT_LESION_OVERSAMPLE})",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of cases held out for validation (default 0.2)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the case split and sampling (default 0)"
    )
    parser.add_argument(
        "--max-steps-per-epoch",
        type=int,
        default=None,
        help="cap on steps per epoch (smoke tests, demos)",
    )
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per training worker")
    parser.add_argument(
        "--workers-per-plane",
        type=int,
        default=1,
        help="data-parallel workers per plane (default 1)",
    )
    parser.add_argument(
        "--cpus-per-worker",
        type=float,
        default=None,
        help="CPUs reserved per worker (default: fits 3 planes on the cluster)",
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="worker-group restarts from the last checkpoint per plane (default 2)",
    )
    parser.add_argument(
        "--planes", nargs="+", default=["axial", "coronal", "sagittal"], help="planes to train"
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="delete an existing run folder and start over instead of resuming",
    )
    _add_common(parser)


def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `stroke-ray segment` (shared with jobs/segment.py)."""
    parser.add_argument(
        "--cohort",
        required=True,
        help="manifest (CSV/Parquet) or ISLES-layout folder; local path or URI",
    )
    parser.add_argument("--model", required=True, help="a finished training run folder (RUN_DIR)")
    parser.add_argument(
        "--out", required=True, help="output folder for masks and metrics (local path or URI)"
    )
    parser.add_argument(
        "--fusion",
        choices=FUSION_MODES,
        default="majority",
        help="how the three planes are fused (default majority)",
    )
    parser.add_argument(
        "--plane-weights",
        type=float,
        nargs=3,
        default=None,
        metavar=("AXIAL", "CORONAL", "SAGITTAL"),
        help="weights for --fusion weighted (default: the run's validation Dice per plane)",
    )
    parser.add_argument(
        "--tta", action="store_true", help="test-time augmentation: average with in-plane flips"
    )
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per model actor")
    parser.add_argument(
        "--num-actors",
        type=int,
        default=1,
        help="model actors (each holds the three models) (default 1)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="slices per forward pass (default 16)"
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="auto = bf16 autocast on GPU, fp32 on CPU (default auto)",
    )
    parser.add_argument(
        "--save-planes",
        action="store_true",
        help="also write per-plane masks, the probability map and the spread map",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="redo cases already finished in OUT"
    )
    parser.add_argument(
        "--fail-on-error", action="store_true", help="exit 1 when any case ends in error"
    )
    _add_common(parser)


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="write the synthetic demo cohort",
        description="Write a synthetic multi-sequence stroke MRI cohort (T1, T2, FLAIR, DWI, lesion masks) and its manifest.csv.",
    )
    parser.add_argument("out_dir", help="folder to write the cohort into")
    parser.add_argument("--cases", type=int, default=8, help="number of cases (default 8)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=(64, 64, 48),
        metavar=("X", "Y", "Z"),
        help="volume shape (default 64 64 48)",
    )
    parser.add_argument(
        "--spacing", type=float, default=3.0, help="isotropic voxel size in mm (default 3.0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _add_quickstart(subparsers) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="demo cohort → train → segment → summary, in one go",
        description="Generate the demo cohort, train the three plane models on it (ResNet50 from scratch, a short "
        "schedule that finishes in minutes on a CPU), segment it and print the summary table.",
    )
    parser.add_argument(
        "out_dir",
        nargs="?",
        default="stroke-ray-demo",
        help="folder for cohort/, run/ and segmentation/ (default ./stroke-ray-demo)",
    )
    parser.add_argument("--cases", type=int, default=8, help="demo cases (default 8)")
    parser.add_argument(
        "--weights",
        default="none",
        help="initial weights: none (default, no download needed), imagenet, or a file",
    )
    _add_model_schedule(parser)
    _add_common(parser)


def _add_architecture(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", default="resnet50", help="smp encoder name (default resnet50)")
    parser.add_argument(
        "--decoder-channels",
        type=int,
        nargs=5,
        default=(256, 128, 64, 32, 16),
        metavar="C",
        help="U-Net decoder channels, five values (default 256 128 64 32 16)",
    )


def _add_model_schedule(parser: argparse.ArgumentParser) -> None:
    _add_architecture(parser)
    parser.add_argument(
        "--epochs",
        type=int,
        default=QUICKSTART_EPOCHS,
        help="epochs per training run (default %(default)s)",
    )
    parser.add_argument(
        "--freeze-epochs",
        type=int,
        default=1,
        help="frozen-encoder epochs for pretrained weights (default 1)",
    )
    parser.add_argument(
        "--max-steps-per-epoch",
        type=int,
        default=QUICKSTART_STEPS_PER_EPOCH,
        help="steps per epoch (default %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="slices per step (default 8)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split and training (default 0)"
    )


def _add_experiment(subparsers) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help="the paper's comparison: TL vs scratch, planes vs fusion modes",
        description="Split the cohort by case (--test-fraction or --folds), train the three planes for every "
        "weight setting, segment the held-out cases with every fusion mode and write metrics.parquet, "
        "table.csv and table.md.",
    )
    parser.add_argument("--cohort", required=True, help="manifest or ISLES-layout folder")
    parser.add_argument("--out", required=True, help="experiment folder")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--folds", type=int, default=None, help="K-fold cross-validation by case")
    split.add_argument(
        "--test-fraction", type=float, default=0.25, help="held-out share of cases (default 0.25)"
    )
    parser.add_argument(
        "--weights",
        nargs="+",
        default=["imagenet", "none"],
        help="weight settings to compare: imagenet, none (scratch) and/or paths/URIs of encoder weights (default imagenet none)",
    )
    parser.add_argument("--use-gpu", action="store_true", help="GPUs for training and segmentation")
    _add_model_schedule(parser)
    _add_common(parser)


def _add_pretrain(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain-encoder",
        help="pretrain an encoder on a separate synthetic cohort (stand-in for ImageNet offline)",
        description="Train an axial Res-UNet on a synthetic cohort generated with another seed and save its "
        "encoder weights, to be given as --weights where ImageNet weights cannot be downloaded.",
    )
    parser.add_argument("out_file", help="where to write the encoder state dict (.pt)")
    parser.add_argument(
        "--work-dir",
        default=None,
        help="folder for the pretraining cohort and run (default: beside OUT_FILE)",
    )
    parser.add_argument("--cases", type=int, default=8, help="synthetic cases (default 8)")
    _add_model_schedule(parser)
    _add_common(parser)


def _add_report(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a segmentation or experiment folder",
        description="Write one HTML file (figures embedded, no network needed) with the run, the summary "
        "table, a sortable per-case table, Dice box plots, training curves, the QC scatter and "
        "FLAIR/DWI pictures of the worst cases with truth and prediction outlined.",
    )
    parser.add_argument("out", help="segmentation output folder or experiment folder (path or URI)")
    parser.add_argument(
        "--html",
        default=None,
        metavar="PATH",
        help="where to write the report (default OUT/report.html)",
    )
    parser.add_argument(
        "--max-cases",
        type=int,
        default=50,
        metavar="N",
        help="case pictures, worst fused Dice first (default 50)",
    )
    _add_common(parser)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="stroke-ray",
        description="Ischemic stroke lesion segmentation on multi-sequence MRI with three plane Res-UNets, Ray Train and Ray Data.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_demo(subparsers)
    add_train_arguments(
        subparsers.add_parser(
            "train",
            help="train the three plane models with Ray Train",
            description="Train the axial, coronal and sagittal Res-UNets concurrently with Ray Train; resumes an existing --out.",
        )
    )
    add_segment_arguments(
        subparsers.add_parser(
            "segment",
            help="segment a cohort with Ray Data",
            description="Segment every case of a cohort with a trained run; writes masks, metrics.parquet and summary.json; resumes an existing --out.",
        )
    )
    _add_quickstart(subparsers)
    _add_report(subparsers)
    _add_experiment(subparsers)
    _add_pretrain(subparsers)
    return parser


def _init_ray(args: argparse.Namespace) -> None:
    import ray

    ray.init(
        address=args.address or os.environ.get("RAY_ADDRESS"),
        ignore_reinit_error=True,
    )
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()


def _train_config(args: argparse.Namespace):
    from stroke_ray.train import TrainConfig

    return TrainConfig(
        cohort=args.cohort,
        out=args.out,
        encoder_name=args.encoder,
        decoder_channels=tuple(args.decoder_channels),
        weights=args.weights,
        epochs=args.epochs,
        freeze_epochs=args.freeze_epochs,
        lr=args.lr,
        finetune_lr=args.finetune_lr,
        batch_size=args.batch_size,
        alpha=args.alpha,
        beta=args.beta,
        lesion_weight=args.lesion_weight,
        lesion_oversample=args.lesion_oversample,
        val_fraction=args.val_fraction,
        seed=args.seed,
        max_steps_per_epoch=args.max_steps_per_epoch,
        planes=tuple(args.planes),
        use_gpu=args.use_gpu,
        workers_per_plane=args.workers_per_plane,
        cpus_per_worker=args.cpus_per_worker,
        max_failures=args.max_failures,
        restart=args.restart,
        progress_bars=sys.stderr.isatty(),
        storage_options=args.storage_options,
    )


def _segment_config(args: argparse.Namespace):
    from stroke_ray.planes import PLANES
    from stroke_ray.segment import SegmentConfig

    weights = dict(zip(PLANES, args.plane_weights, strict=True)) if args.plane_weights else None
    return SegmentConfig(
        cohort=args.cohort,
        model=args.model,
        out=args.out,
        fusion=args.fusion,
        plane_weights=weights,
        tta=args.tta,
        use_gpu=args.use_gpu,
        num_actors=args.num_actors,
        batch_size=args.batch_size,
        precision=args.precision,
        save_planes=args.save_planes,
        overwrite=args.overwrite,
        storage_options=args.storage_options,
    )


def run_train(args: argparse.Namespace) -> int:
    """`stroke-ray train`."""
    from stroke_ray.train import train

    _init_ray(args)
    run = train(_train_config(args))
    for plane, values in run["planes"].items():
        print(f"{plane:>9}: best validation Dice {values['val_dice']:.4f}")
    print(f"run folder: {args.out}")
    return 0


def run_segment(args: argparse.Namespace) -> int:
    """`stroke-ray segment`."""
    from stroke_ray.progress import case_progress, print_summary
    from stroke_ray.segment import segment

    _init_ray(args)
    with case_progress() as progress:
        _, summary = segment(_segment_config(args), progress=progress)
    print_summary(summary)
    errors = summary["status_counts"]["error"]
    return 1 if errors and args.fail_on_error else 0


def run_quickstart(args: argparse.Namespace) -> int:
    """`stroke-ray quickstart`: demo → train → segment → summary."""
    from stroke_ray.demo import generate_cohort
    from stroke_ray.progress import case_progress, print_summary
    from stroke_ray.segment import SegmentConfig, segment
    from stroke_ray.train import TrainConfig, train

    root = Path(args.out_dir)
    manifest = generate_cohort(root / "cohort", n_cases=args.cases, seed=args.seed)
    print(f"demo cohort: {manifest}")
    _init_ray(args)
    run_dir = str(root / "run")
    run = train(
        TrainConfig(
            cohort=str(manifest),
            out=run_dir,
            weights=args.weights,
            seed=args.seed,
            progress_bars=sys.stderr.isatty(),
            **_schedule(args),
        )
    )
    for plane, values in run["planes"].items():
        print(f"{plane:>9}: best validation Dice {values['val_dice']:.4f}")
    with case_progress() as progress:
        _, summary = segment(
            SegmentConfig(cohort=str(manifest), model=run_dir, out=str(root / "segmentation")),
            progress=progress,
        )
    print_summary(summary)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """`stroke-ray demo`."""
    from stroke_ray.demo import generate_cohort

    manifest = generate_cohort(
        args.out_dir,
        n_cases=args.cases,
        shape=tuple(args.shape),
        spacing_mm=args.spacing,
        seed=args.seed,
    )
    print(manifest)
    return 0


def _schedule(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "encoder_name": args.encoder,
        "decoder_channels": tuple(args.decoder_channels),
        "epochs": args.epochs,
        "freeze_epochs": args.freeze_epochs,
        "max_steps_per_epoch": args.max_steps_per_epoch,
        "batch_size": args.batch_size,
    }


def run_experiment_command(args: argparse.Namespace) -> int:
    """`stroke-ray experiment`."""
    from stroke_ray.experiment import ExperimentConfig, run_experiment

    _init_ray(args)
    summary = run_experiment(
        ExperimentConfig(
            cohort=args.cohort,
            out=args.out,
            weights=tuple(args.weights),
            folds=args.folds,
            test_fraction=args.test_fraction,
            seed=args.seed,
            training=_schedule(args),
            use_gpu=args.use_gpu,
            storage_options=args.storage_options,
        )
    )
    from stroke_ray.io import join_uri, read_bytes

    print(read_bytes(join_uri(args.out, "table.md"), args.storage_options).decode())
    for weights, correlation in summary["qc_dice_agreement_correlation"].items():
        if correlation is not None:
            print(
                f"{weights}: correlation of fused Dice with plane agreement r = {correlation:.3f}"
            )
    return 0


def run_pretrain(args: argparse.Namespace) -> int:
    """`stroke-ray pretrain-encoder`."""
    from stroke_ray.experiment import pretrain_encoder

    _init_ray(args)
    work_dir = args.work_dir or f"{os.path.splitext(args.out_file)[0]}_pretraining"
    schedule = _schedule(args)
    encoder = schedule.pop("encoder_name")
    pretrain_encoder(
        args.out_file,
        work_dir=work_dir,
        encoder_name=encoder,
        cases=args.cases,
        seed=1000 + args.seed,
        training=schedule,
    )
    print(args.out_file)
    return 0


def run_report(args: argparse.Namespace) -> int:
    """`stroke-ray report`."""
    from stroke_ray.report import write_report

    print(
        write_report(
            args.out, args.html, max_cases=args.max_cases, storage_options=args.storage_options
        )
    )
    return 0


COMMANDS = {
    "demo": run_demo,
    "train": run_train,
    "segment": run_segment,
    "quickstart": run_quickstart,
    "report": run_report,
    "experiment": run_experiment_command,
    "pretrain-encoder": run_pretrain,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `stroke-ray` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from stroke_ray.cohort import ManifestError
    from stroke_ray.model import WeightsError
    from stroke_ray.report import ReportError
    from stroke_ray.runs import RunNotReadyError
    from stroke_ray.train import TrainError

    try:
        return COMMANDS[args.command](args)
    except (ManifestError, WeightsError, TrainError, ReportError, RunNotReadyError) as err:
        logger.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
