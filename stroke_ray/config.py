"""Every option of every job, declared once: a config dataclass field with its default and help.

The CLI builds its options from these fields (:mod:`stroke_ray.options`), Ray workers receive
the same objects, and ``run.json``/``segment.json`` record them (without credentials).
Nothing here imports torch or Ray, so ``stroke-ray --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from stroke_ray.case import sequence_name
from stroke_ray.options import option

__all__ = [
    "PLANES",
    "FUSION_MODES",
    "PRECISIONS",
    "SEQUENCES",
    "REFERENCE",
    "LAYOUTS",
    "CHECKPOINT_METRICS",
    "LR_SCHEDULES",
    "ModelConfig",
    "TrainConfig",
    "SegmentConfig",
    "ExperimentConfig",
    "DemoConfig",
    "ReportConfig",
    "CohortConfig",
    "PlanConfig",
    "parse_storage_options",
    "is_scratch",
    "weights_label",
    "describe_weights",
    "public_dict",
    "spacing_setting",
]

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
FUSION_MODES: tuple[str, ...] = ("majority", "weighted", "soft")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
SEQUENCES: tuple[str, ...] = ("t1", "t2", "flair", "dwi")  # the paper's inputs, in channel order
REFERENCE = "flair"  # the paper's reference grid
LAYOUTS: tuple[str, ...] = ("flat", "bids")  # how segment lays out its masks
# validation score that picks a plane's best epoch (train_loop.selection_score)
CHECKPOINT_METRICS: tuple[str, ...] = ("dice_lesion_f1", "dice", "lesion_f1")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
_SPACING_WORDS = ("auto", "source")
_SCRATCH = ("none", "", "scratch")


def parse_storage_options(text: str | None) -> dict[str, Any] | None:
    """``--storage-options``: a JSON object, or nothing."""
    import argparse

    if not text:
        return None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--storage-options is not valid JSON: {err.msg}") from err
    if not isinstance(values, dict):
        raise argparse.ArgumentTypeError("--storage-options must be a JSON object")
    return values


def is_scratch(weights: str | None) -> bool:
    """Whether a weight setting means random initialisation (training from scratch)."""
    return weights is None or weights in _SCRATCH


def weights_label(weights: str | None) -> str:
    """A short name for a weight setting: scratch, imagenet, or pretrained-<file stem>."""
    if is_scratch(weights):
        return "scratch"
    if weights == "imagenet":
        return "imagenet"
    stem = os.path.basename(str(weights).rstrip("/")).split(".")[0]
    return f"pretrained-{stem}"


def describe_weights(weights: str | None) -> str:
    """The setting and where a run's initial weights came from."""
    if is_scratch(weights):
        return f"{weights or 'none'}: random initialisation (trained from scratch)"
    if weights == "imagenet":
        return "imagenet: ImageNet-pretrained encoder (smp download; transfer learning)"
    return f"{weights}: encoder weights loaded from this file (transfer learning)"


def _spacing_token(text: str) -> str | float:
    """One ``--spacing`` word: auto, source or a positive voxel size in mm."""
    import argparse

    if text in _SPACING_WORDS:
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(
            f"--spacing takes 'auto', 'source' or three voxel sizes in mm, not {text!r}"
        )
    return value


def spacing_setting(value: Any) -> str | tuple[float, float, float]:
    """``TrainConfig.spacing`` as ``"auto"``, ``"source"`` or three voxel sizes (mm, RAS order)."""
    words = [value] if isinstance(value, str | int | float) else list(value)
    if len(words) == 1 and words[0] in _SPACING_WORDS:
        return str(words[0])
    try:
        sizes = tuple(float(word) for word in words)
    except (TypeError, ValueError):
        sizes = ()
    if len(sizes) != 3 or not all(size > 0 for size in sizes):
        raise ValueError(
            f"spacing must be 'auto', 'source' or three positive voxel sizes in mm, not {value!r}"
        )
    return sizes  # type: ignore[return-value]


_STORAGE_HELP = (
    "fsspec storage options for s3:// and other URIs, as a JSON object, e.g. "
    '\'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\'. Credentials are better '
    "left to the standard places (AWS_* environment variables, profiles); whatever is given "
    "here is never logged or written to outputs."
)
_COHORT_HELP = (
    "manifest (CSV/Parquet) or cohort folder (with a manifest, ISLES 2015 SISS, BIDS or "
    "nnU-Net raw); local path or URI"
)


def _storage_field() -> Any:
    return field(
        default=None,
        repr=False,
        metadata={"help": _STORAGE_HELP, "parse": parse_storage_options, "metavar": "JSON"},
    )


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one plane's Res-UNet (the initial weights are chosen separately)."""

    encoder_name: str = option("smp encoder name", default="resnet50", flag="--encoder")
    decoder_channels: tuple[int, ...] = option(
        "U-Net decoder channels, five values", default=(256, 128, 64, 32, 16), nargs=5, metavar="C"
    )
    encoder_depth: int = 5
    in_channels: int = len(SEQUENCES)  # one per input sequence; train sets it from --sequences

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (run.json's ``model``)."""
        return {**asdict(self), "decoder_channels": list(self.decoder_channels)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**values, "decoder_channels": tuple(values["decoder_channels"])})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; the CLI fills it, Ray workers receive it."""

    cohort: str = option(_COHORT_HELP)
    out: str = option("run folder to create or resume (local path or URI)")
    model: ModelConfig = field(default_factory=ModelConfig)
    weights: str = option(
        "initial encoder weights: 'imagenet' (smp download), 'none' (train from scratch), "
        "or a path/URI of a checkpoint or encoder state dict",
        default="imagenet",
    )
    sequences: tuple[str, ...] = option(
        "input sequences, one model channel each, in channel order (names as the cohort has "
        "them, case-insensitive: t1, t2, flair, dwi, adc, …; T1w = t1, T2w = t2)",
        default=SEQUENCES,
        parse=sequence_name,
        metavar="NAME",
    )
    reference: str = option(
        "the sequence whose grid the others share and whose header the masks get",
        default=REFERENCE,
        parse=sequence_name,
        metavar="NAME",
    )
    resample: bool = option(
        "resample a sequence on another grid onto the reference grid (world coordinates, "
        "linear; no registration) instead of rejecting the case",
        default=False,
    )
    epochs: int = option("training epochs", default=10)
    freeze_epochs: int = option(
        "epochs with the pretrained encoder frozen before fine-tuning at --finetune-lr; "
        "ignored with --weights none",
        default=3,
    )
    lr: float = option(
        "Adam learning rate: frozen phase, and every epoch from scratch", default=1e-3
    )
    finetune_lr: float = option(
        "learning rate once a pretrained encoder is unfrozen (every epoch with --freeze-epochs 0)",
        default=1e-4,
    )
    batch_size: int = option("slices per training step per worker", default=8)
    alpha: float = option("weight of the cross-entropy term", default=1.0)
    beta: float = option("weight of the Dice term", default=1.0)
    lesion_weight: float = option(
        "cross-entropy weight of the lesion class, background is 1", default=10.0
    )
    lesion_oversample: float = option(
        "how much more often slices with lesion are drawn (6 chosen on the realistic demo; "
        "README, Method)",
        default=6.0,
    )
    lr_schedule: str = option(
        "learning rate over the epochs of a phase: constant, or cosine decay to 5 % of it "
        "(chosen on the realistic demo; README, Method)",
        default="cosine",
        choices=LR_SCHEDULES,
    )
    spacing: tuple[float | str, ...] = option(
        "voxel size every case is resampled to before slicing, mm along x y z (RAS): 'auto' = "
        "the median voxel size of the training cohort per axis (as nnU-Net plans it), three "
        "numbers, or 'source' = keep each case's own grid; run.json records the numbers used",
        default=("auto",),
        nargs="+",
        metavar="auto|source|MM",
        parse=_spacing_token,
    )
    augment: bool = option(
        "augment training batches (flips, rotation, scaling, intensity, noise, blur, thick "
        "slices; stroke_ray/augment.py)",
        default=True,
    )
    checkpoint_metric: str = option(
        "validation score that picks each plane's best epoch: dice_lesion_f1 = mean of pooled "
        "Dice and mean lesion-wise F1 of the validation cases",
        default="dice_lesion_f1",
        choices=CHECKPOINT_METRICS,
    )
    val_fraction: float = option("share of cases held out for validation", default=0.2)
    seed: int = option("seed of the case split and sampling", default=0)
    max_steps_per_epoch: int | None = option(
        "cap on steps per epoch (smoke tests, demos)", default=None
    )
    planes: tuple[str, ...] = option("planes to train", default=PLANES, choices=PLANES)
    use_gpu: bool = option("train on GPUs (one per worker unless --gpus-per-worker)", default=False)
    gpus_per_worker: float | None = option(
        "share of a GPU per training worker with --use-gpu (e.g. 0.33: three planes train at "
        "once on one GPU; see the README for the memory each needs)",
        default=None,
    )
    workers_per_plane: int = option("data-parallel workers per plane", default=1)
    cpus_per_worker: float | None = option(
        "CPUs reserved per worker (default: fits 3 planes on the cluster)", default=None
    )
    max_failures: int = option(
        "worker-group restarts from the last checkpoint per plane", default=2
    )
    restart: bool = option(
        "delete an existing run folder and start over instead of resuming", default=False
    )
    min_cases: int = 2
    progress_bars: bool = False
    storage_options: dict[str, Any] | None = _storage_field()

    @property
    def scratch(self) -> bool:
        """Whether the run starts from random weights."""
        return is_scratch(self.weights)


@dataclass(frozen=True)
class SegmentConfig:
    """Options of a segmentation job; the CLI fills it."""

    cohort: str = option(_COHORT_HELP)
    model: str = option("a finished training run folder (RUN_DIR)")
    out: str = option("output folder for masks and metrics (local path or URI)")
    fusion: str = option(
        "how the planes are fused (soft: it beat every plane and the other modes on the "
        "realistic demo; README, Method)",
        default="soft",
        choices=FUSION_MODES,
    )
    plane_weights: tuple[float, ...] | None = option(
        "weights for --fusion weighted (default: the run's validation Dice per plane)",
        default=None,
        nargs=3,
        metavar=("AXIAL", "CORONAL", "SAGITTAL"),
    )
    tta: bool = option("test-time augmentation: average with in-plane flips", default=False)
    use_gpu: bool = option("run the model actors on GPUs", default=False)
    gpus_per_actor: float | None = option(
        "share of a GPU per model actor with --use-gpu (e.g. 0.25: four actors on one GPU)",
        default=None,
    )
    num_actors: int = option("model actors (each holds the three models)", default=1)
    batch_size: int = option("slices per forward pass", default=16)
    precision: str = option(
        "auto = bf16 autocast where bf16 is native (GPU, CPU with avx512_bf16/amx_bf16), else "
        "fp32; bf16 on a CPU without it is emulated, ~40x slower",
        default="auto",
        choices=PRECISIONS,
    )
    save_planes: bool = option(
        "also write per-plane masks, the probability map and the spread map", default=False
    )
    overwrite: bool = option("redo cases already finished in OUT", default=False)
    layout: str = option(
        "how masks are written: flat (OUT/masks/<case>.nii.gz) or bids (a BIDS derivatives "
        "dataset: OUT/sub-X/ses-Y/<datatype>/…_space-orig_label-L_mask.nii.gz + sidecar)",
        default="flat",
        choices=LAYOUTS,
    )
    min_lesion_ml: float | None = option(
        "remove fused lesions (26-connected components) smaller than this many ml (default: "
        "the value the run suggests from its validation cases, 0 for runs without one)",
        default=None,
        metavar="ML",
    )
    price_per_hour: float | None = option(
        "price of one node per hour, as you pay it (any currency): throughput.json then gives "
        "the job's cost and the cost per 1,000 volumes",
        default=None,
        metavar="P",
    )
    extra_fusions: tuple[str, ...] = ()
    storage_options: dict[str, Any] | None = _storage_field()

    @property
    def weights_by_plane(self) -> dict[str, float] | None:
        """``plane_weights`` keyed by plane name."""
        if self.plane_weights is None:
            return None
        return dict(zip(PLANES, self.plane_weights, strict=True))


@dataclass(frozen=True)
class ExperimentConfig:
    """The protocol: how cases are split and which initial weights are compared."""

    cohort: str = option(_COHORT_HELP)
    out: str = option("experiment folder")
    weights: tuple[str, ...] = option(
        "weight settings to compare: imagenet, none (scratch) and/or paths/URIs of encoder weights",
        default=("imagenet", "none"),
    )
    folds: int | None = option(
        "K-fold cross-validation by case (instead of --test-fraction)", default=None
    )
    test_fraction: float = option("held-out share of cases", default=0.25)
    min_lesion_ml: float | None = option(
        "segment the held-out cases with this minimum fused lesion size in ml (default: each "
        "run's suggestion from its validation cases, as `segment` does)",
        default=None,
        metavar="ML",
    )
    training: TrainConfig | None = None  # every arm is this config with its weights and folders

    @property
    def storage_options(self) -> dict[str, Any] | None:
        """The training config's storage options (one set for the whole experiment)."""
        return self.training.storage_options if self.training else None


@dataclass(frozen=True)
class DemoConfig:
    """The synthetic demo cohort."""

    out_dir: str = option("folder to write the cohort into", flag="out_dir")
    cases: int = option("number of cases", default=8)
    shape: tuple[int, ...] = option(
        "volume shape", default=(64, 64, 48), nargs=3, metavar=("X", "Y", "Z")
    )
    spacing: float = option(
        "isotropic voxel size in mm (the DWI grid in BIDS layouts)", default=3.0
    )
    seed: int = option("random seed", default=0)
    layout: str = option(
        "folder layout to write",
        default="manifest",
        choices=("manifest", "bids", "bids-flat", "atlas", "nnunet", "isles15"),
    )
    sequences: tuple[str, ...] | None = option(
        "sequences to write, in order (default: the layout's own: t1 t2 flair dwi; "
        "bids/bids-flat: dwi adc flair; atlas: t1)",
        default=None,
        choices=("t1", "t2", "flair", "dwi", "adc"),
        metavar="SEQ",
    )
    thick_fraction: float = option("share of cases written with thick slices", default=0.5)
    slice_thickness: float = option(
        "thick-slice thickness in mm (a whole multiple of --spacing, at least 2 slices)",
        default=5.0,
    )
    workers: int = option("processes that write cases", default=1)


@dataclass(frozen=True)
class ReportConfig:
    """The HTML report of a segmentation or experiment folder."""

    out: str = option("segmentation output folder or experiment folder (path or URI)", flag="out")
    html: str | None = option(
        "where to write the report (default OUT/report.html)", default=None, metavar="PATH"
    )
    max_cases: int = option("case pictures, worst fused Dice first", default=50, metavar="N")
    storage_options: dict[str, Any] | None = _storage_field()


@dataclass(frozen=True)
class CohortConfig:
    """What `stroke-ray cohort` inspects, and where it writes the manifest."""

    path: str = option(_COHORT_HELP, flag="path")
    write_manifest: str | None = option(
        "write the cases found as a manifest CSV (local path or URI; loads back to the same cases)",
        default=None,
        metavar="OUT.csv",
    )
    storage_options: dict[str, Any] | None = _storage_field()


@dataclass(frozen=True)
class PlanConfig:
    """Nodes and cost for a cohort, from a previous segment job's throughput.json."""

    cases: int = option("cases (volumes) to segment", metavar="N")
    hours: float = option("hours the job may take", metavar="T")
    throughput: str = option(
        "a previous segment job's OUT/throughput.json (or its OUT folder), path or URI",
        metavar="PATH",
    )
    price_per_hour: float | None = option(
        "price of one node of that type per hour (default: the one the job recorded)",
        default=None,
        metavar="P",
    )
    storage_options: dict[str, Any] | None = _storage_field()


def public_dict(config: Any) -> dict[str, Any]:
    """A config as JSON-friendly values without credentials (for run.json, segment.json)."""
    values = {}
    for item in dataclasses.fields(config):
        if item.name == "storage_options":
            continue
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            value = public_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        values[item.name] = value
    return values
