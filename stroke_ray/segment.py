"""Ray Data pipeline: read → predict (model actors) → restack + vote + write, per case.

One row is one case, so a case's slices travel through Ray together and nothing holds
more than the cases in flight (memory does not grow with the cohort):

1. ``read_case_row`` (tasks): read the four sequences and the label over fsspec, validate,
   reorient to RAS, crop to the brain, z-score, pad (exactly as in training).
2. ``PlanePredictor`` (stateful actors, ``map_batches`` with a callable class): each actor
   loads the three plane models once and predicts every brain slice of every plane in
   batches of ``batch_size`` slices (channels-last + bf16 autocast on GPU).
3. ``reduce_case_row`` (tasks): restack each plane's slices into a volume in slice order,
   fuse the planes per voxel, map back to the source geometry, write the NIfTI outputs,
   compute metrics and write the case's metric part (atomically, last).

A failing case never stops the job: each stage turns its exception into an ``error`` row
that names the case, file and problem. Fault tolerance: Ray Data restarts a dead actor
and re-runs its task (``max_restarts=-1``, ``max_task_retries=-1`` are Ray Data's own
defaults for actor pools; read/reduce tasks use Ray's task retries). A re-run case
rewrites the same files atomically, so each case appears once in the outputs.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import nibabel as nib
import numpy as np
import ray
import torch

from stroke_ray.cohort import Case, load_cohort
from stroke_ray.fusion import FUSION_MODES, THRESHOLD, fuse, probability_spread, vote_count
from stroke_ray.inference import predict_plane, restack
from stroke_ray.io import StorageOptions, absolute_uri, image_like, join_uri, write_nifti_atomic
from stroke_ray.metrics import evaluate
from stroke_ray.outputs import consolidate, finished_cases, mask_uri, write_case_rows
from stroke_ray.planes import PLANES
from stroke_ray.preprocess import prepare, restore
from stroke_ray.qc import agreement_scores, qc_flag
from stroke_ray.runs import finished_run, load_plane_model, write_json
from stroke_ray.volumes import read_case

__all__ = [
    "SegmentConfig",
    "segment",
    "read_case_row",
    "PlanePredictor",
    "reduce_case_row",
]

logger = logging.getLogger(__name__)


@dataclass
class SegmentConfig:
    """Options of a segmentation job; the CLI fills it."""

    cohort: str
    model: str
    out: str
    fusion: str = "majority"
    plane_weights: dict[str, float] | None = None
    tta: bool = False
    use_gpu: bool = False
    num_actors: int = 1
    batch_size: int = 16
    precision: str = "auto"
    save_planes: bool = False
    extra_fusions: tuple[str, ...] = ()
    overwrite: bool = False
    storage_options: dict[str, Any] | None = field(default=None, repr=False)


def _error_row(case_id: str, message: str, seconds: float = 0.0) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "status": "error",
        "error": message,
        "seconds": seconds,
        "payload": b"",
    }


def _describe(err: Exception) -> str:
    text = str(err)
    return text if text.startswith("case ") else f"{type(err).__name__}: {text}"


def read_case_row(row: dict[str, Any], options_ref: Any = None) -> dict[str, Any]:
    """Stage 1: read, validate and prepare one case; an error row if that fails."""
    started = time.perf_counter()
    case = Case(**{key: row[key] for key in ("case_id", "t1", "t2", "flair", "dwi", "label")})
    try:
        options = ray.get(options_ref) if options_ref is not None else None
        volumes = read_case(case, options)
        prepared = prepare(volumes)
    except Exception as err:  # noqa: BLE001 - any failure becomes this case's error row
        logger.warning("case %s failed to read: %s", case.case_id, err)
        return _error_row(case.case_id, _describe(err), time.perf_counter() - started)
    payload = {
        "prepared": prepared,
        "header": volumes.header.binaryblock,
        "label_bits": None if volumes.label is None else np.packbits(volumes.label),
        "source_spacing_mm": volumes.spacing_mm,
    }
    return {
        "case_id": case.case_id,
        "status": "ok",
        "error": None,
        "seconds": time.perf_counter() - started,
        "payload": pickle.dumps(payload, protocol=5),
    }


class PlanePredictor:
    """Stage 2 (an actor): holds the three plane models and predicts cases' slices."""

    def __init__(
        self,
        run_dir: str,
        *,
        planes: tuple[str, ...] = PLANES,
        use_gpu: bool = False,
        batch_size: int = 16,
        precision: str = "auto",
        tta: bool = False,
        threads: int | None = None,
        options_ref: Any = None,
    ) -> None:
        options = ray.get(options_ref) if options_ref is not None else None
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        memory_format = torch.channels_last if self.device.type == "cuda" else torch.preserve_format
        self.models = {
            plane: load_plane_model(run_dir, plane, options).to(
                self.device, memory_format=memory_format
            )
            for plane in planes
        }
        self.options = dict(batch_size=batch_size, precision=precision, tta=tta, device=self.device)

    def predict(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Add each plane's slice probabilities to a prepared case's payload."""
        prepared = payload["prepared"]
        payload["planes"] = {
            plane: predict_plane(model, prepared.image, prepared.brain, plane, **self.options)
            for plane, model in self.models.items()
        }
        prepared.image = None  # the reduce stage needs the predictions, not the input again
        return payload

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        """Predict every ok row of a batch; pass error rows through unchanged."""
        columns = {key: list(values) for key, values in batch.items()}
        for i, status in enumerate(columns["status"]):
            if status != "ok":
                continue
            started = time.perf_counter()
            try:
                payload = self.predict(pickle.loads(columns["payload"][i]))
                columns["payload"][i] = pickle.dumps(payload, protocol=5)
            except Exception as err:  # noqa: BLE001 - one bad case must not kill the actor
                logger.warning("case %s failed in prediction: %s", columns["case_id"][i], err)
                columns["status"][i], columns["error"][i] = "error", _describe(err)
                columns["payload"][i] = b""
            columns["seconds"][i] = float(columns["seconds"][i]) + time.perf_counter() - started
        return columns


@dataclass(frozen=True)
class ReduceSettings:
    """What the reduce stage needs besides the row."""

    out: str
    run_id: str
    fusion: str = "majority"
    plane_weights: dict[str, float] | None = None
    save_planes: bool = False
    extra_fusions: tuple[str, ...] = ()


def _write(data: np.ndarray, header: nib.Nifti1Header, uri: str, options: StorageOptions) -> str:
    write_nifti_atomic(image_like(data, header), uri, options)
    return uri


def _metric_rows(
    case_id: str,
    masks: dict[str, np.ndarray],
    label: np.ndarray | None,
    spacing_mm: tuple[float, float, float],
    common: dict[str, Any],
) -> list[dict[str, Any]]:
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    rows = []
    for source, mask in masks.items():
        row = {**common, "case_id": case_id, "source": source}
        if label is None:
            row.update(status="unlabelled", volume_pred_ml=float(mask.sum()) * voxel_ml)
        else:
            row.update(status="ok", **evaluate(mask, label, spacing_mm))
        rows.append(row)
    return rows


def reduce_case_row(
    row: dict[str, Any], settings: ReduceSettings, options_ref: Any = None
) -> dict[str, Any]:
    """Stage 3: restack, fuse, write images in source geometry, write metric rows."""
    case_id, started = row["case_id"], time.perf_counter()
    options = ray.get(options_ref) if options_ref is not None else None
    common = {"run_id": settings.run_id, "fusion": settings.fusion}
    if row["status"] == "ok":
        try:
            rows = _reduce(pickle.loads(row["payload"]), case_id, settings, options, common)
        except Exception as err:  # noqa: BLE001 - one bad case must not stop the job
            logger.warning("case %s failed in restack/vote/write: %s", case_id, err)
            row = _error_row(case_id, _describe(err))
    if row["status"] == "error":
        rows = [
            {
                **common,
                "case_id": case_id,
                "source": "fused",
                "status": "error",
                "error": row["error"],
            }
        ]
    seconds = float(row["seconds"]) + time.perf_counter() - started
    for metric_row in rows:
        metric_row["seconds"] = seconds
    write_case_rows(rows, settings.out, case_id, options)
    fused = next(r for r in rows if r["source"] == "fused")
    return {
        "case_id": case_id,
        "status": fused["status"],
        "error": fused.get("error"),
        "dice": fused.get("dice"),
        "seconds": seconds,
    }


def _write_extras(
    probabilities, plane_masks, votes, geometry, header, case_id, settings, options
) -> None:
    """The QC vote map always; per-plane masks, probability and spread with save_planes."""
    out = settings.out
    _write(restore(votes, geometry), header, mask_uri(out, case_id, "qc", "_votes"), options)
    if not settings.save_planes:
        return
    for plane in probabilities:
        _write(plane_masks[plane], header, mask_uri(out, case_id, "planes", f"_{plane}"), options)
    mean = (sum(probabilities.values()) / len(probabilities)).astype(np.float32)
    _write(restore(mean, geometry), header, mask_uri(out, case_id, "probability"), options)
    spread = restore(probability_spread(probabilities), geometry)
    _write(spread, header, mask_uri(out, case_id, "qc", "_spread"), options)


def _qc_columns(probabilities, votes, fused, brain, spacing_mm) -> dict[str, Any]:
    scores = agreement_scores(probabilities, votes, fused)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    flag = qc_flag(
        scores,
        volume_ml=float(fused.sum()) * voxel_ml,
        brain_ml=float(brain.sum()) * voxel_ml,
        any_lesion=bool(votes.any()),
    )
    return {**scores, "qc_flag": flag}


def _reduce(
    payload, case_id: str, settings: ReduceSettings, options, common
) -> list[dict[str, Any]]:
    prepared, geometry = payload["prepared"], payload["prepared"].geometry
    header = nib.Nifti1Header(binaryblock=payload["header"])
    probabilities = {
        plane: restack(prediction, prepared.brain.shape, plane)
        for plane, prediction in payload["planes"].items()
    }
    fused = fuse(probabilities, settings.fusion, settings.plane_weights)
    votes = vote_count(probabilities)
    masks = {
        plane: restore((p >= THRESHOLD).astype(np.uint8), geometry)
        for plane, p in probabilities.items()
    }
    masks["fused"] = restore(fused, geometry)
    for mode in settings.extra_fusions:
        masks[f"fused_{mode}"] = restore(
            fuse(probabilities, mode, settings.plane_weights), geometry
        )
    written = _write(masks["fused"], header, mask_uri(settings.out, case_id), options)
    _write_extras(probabilities, masks, votes, geometry, header, case_id, settings, options)
    label = None
    if payload["label_bits"] is not None:
        size = int(np.prod(geometry.source_shape))
        label = np.unpackbits(payload["label_bits"], count=size).reshape(geometry.source_shape)
    spacing = payload["source_spacing_mm"]
    rows = _metric_rows(case_id, masks, label, spacing, {**common, "mask_uri": written})
    qc = _qc_columns(probabilities, votes, fused, prepared.brain, spacing)
    for row in rows:
        if row["source"] == "fused":
            row.update(qc)
        elif row["source"].startswith("fused_"):
            row["fusion"] = row["source"].removeprefix("fused_")
    return rows


def _public_settings(config: SegmentConfig, run: dict[str, Any]) -> dict[str, Any]:
    """What segment.json records about this job (no credentials)."""
    values = {k: v for k, v in asdict(config).items() if k != "storage_options"}
    return {**values, "run_id": run.get("run_id"), "planes": list(run["planes"])}


def _threads_per_actor(config: SegmentConfig) -> int:
    """CPU actors share the node's cores (read/write tasks run beside them)."""
    node_cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    return max(1, node_cpus // max(config.num_actors, 1))


def _plane_weights(config: SegmentConfig, run: dict[str, Any]) -> dict[str, float] | None:
    if "weighted" not in (config.fusion, *config.extra_fusions):
        return None
    if config.plane_weights:
        return config.plane_weights
    return {plane: float(values["val_dice"]) for plane, values in run["planes"].items()}


def segment(config: SegmentConfig, progress=None) -> tuple[Any, dict[str, Any]]:
    """Segment a cohort with a trained run; return (metrics frame, summary)."""
    if config.fusion not in FUSION_MODES:
        raise ValueError(f"unknown fusion {config.fusion!r}; choose one of {FUSION_MODES}")
    config = replace(config, model=absolute_uri(config.model), out=absolute_uri(config.out))
    options = config.storage_options
    cases = load_cohort(config.cohort, options)
    run = finished_run(config.model, options)
    write_json(_public_settings(config, run), join_uri(config.out, "segment.json"), options)
    done = set() if config.overwrite else finished_cases(config.out, options)
    todo = [case for case in cases if case.case_id not in done]
    logger.info(
        "%d cases, %d already finished, %d to segment",
        len(cases),
        len(cases) - len(todo),
        len(todo),
    )
    if todo:
        _run_pipeline(config, run, todo, progress)
    return consolidate(config.out, options, case_ids=[case.case_id for case in cases])


def _run_pipeline(config: SegmentConfig, run: dict[str, Any], todo: list[Case], progress) -> None:
    options_ref = ray.put(config.storage_options)
    settings = ReduceSettings(
        out=config.out,
        run_id=str(run.get("run_id", "")),
        fusion=config.fusion,
        plane_weights=_plane_weights(config, run),
        save_planes=config.save_planes,
        extra_fusions=tuple(config.extra_fusions),
    )
    dataset = ray.data.from_items([case.to_dict() for case in todo], override_num_blocks=len(todo))
    # read and write are light tasks (0.25 CPU) kept apart from the model actors (1 CPU):
    # different resources stop Ray Data from fusing reading into the actor, so a case is
    # read while the previous one is predicted
    dataset = dataset.map(read_case_row, fn_kwargs={"options_ref": options_ref}, num_cpus=0.25)
    dataset = dataset.map_batches(
        PlanePredictor,
        fn_constructor_args=(config.model,),
        fn_constructor_kwargs={
            "planes": tuple(run["planes"]),
            "use_gpu": config.use_gpu,
            "batch_size": config.batch_size,
            "precision": config.precision,
            "tta": config.tta,
            "threads": None if config.use_gpu else _threads_per_actor(config),
            "options_ref": options_ref,
        },
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.num_actors),
        num_gpus=1 if config.use_gpu else 0,
        num_cpus=1,
    )
    dataset = dataset.map(
        reduce_case_row, fn_kwargs={"settings": settings, "options_ref": options_ref}, num_cpus=0.25
    )
    for result in dataset.iter_rows():
        if progress is not None:
            progress(result)
        if result["status"] == "error":
            logger.warning("%s", result["error"])
