"""Ray Data pipeline: read → predict (model actors) → restack + vote + write, per case.

One row is one case, so a case's slices travel through Ray together and nothing holds
more than the cases in flight (memory does not grow with the cohort). Rows carry a typed
:class:`CaseWork` between the stages:

1. :func:`read_stage` (tasks): read the run's sequences (``run.json``: sequences, reference,
   resampling) and the label over fsspec, validate, reorient to RAS, crop to the brain,
   z-score, pad (exactly as in training).
2. :class:`PlanePredictor` (stateful actors, ``Dataset.map`` with a callable class): each
   actor loads the plane models once and predicts every brain slice of every plane in
   batches of ``batch_size`` slices (channels-last + bf16 autocast on GPU).
3. :func:`write_stage` (tasks, a :class:`CaseWriter` each): the pure core of :mod:`stroke_ray.case_outputs` (restack,
   fuse, map back to the source geometry, metrics), then the NIfTI outputs (the fused mask
   flat or as BIDS derivatives, ``--layout``) and the case's metric part (atomically, last).

Each stage times itself (wall and process CPU seconds) into the row; the job writes them,
with Ray Data's per-operator stats, into ``OUT/throughput.json`` (:mod:`stroke_ray.throughput`).

A failing case never stops the job: each stage turns its exception into an error that names
the case, file and problem. Fault tolerance: Ray Data restarts a dead actor and re-runs its
task (``max_restarts=-1``, ``max_task_retries=-1`` are Ray Data's own defaults for actor
pools; read/write tasks use Ray's task retries). A re-run case rewrites the same files
atomically, so each case appears once in the outputs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

import nibabel as nib
import numpy as np
import ray
import torch

from stroke_ray.case_outputs import CaseMasks, FusionSettings, case_masks, case_rows, error_row
from stroke_ray.cohort import Case, ManifestError, find_cohort
from stroke_ray.config import FUSION_MODES, SegmentConfig, public_dict
from stroke_ray.derivatives import sidecar, sidecar_uri, write_dataset_files
from stroke_ray.fingerprint import ensure_same_definition
from stroke_ray.fusion import THRESHOLD
from stroke_ray.inference import PlanePrediction, predict_planes, resolve_precision
from stroke_ray.io import (
    StorageOptions,
    absolute_uri,
    exists,
    image_like,
    join_uri,
    read_json,
    write_json,
    write_nifti_atomic,
)
from stroke_ray.machine import machine_info
from stroke_ray.outputs import (
    consolidate,
    finished_cases,
    fused_mask_uri,
    mask_uri,
    write_case_rows,
)
from stroke_ray.preprocess import Prepared, prepare
from stroke_ray.runs import finished_run, load_plane_models, run_inputs
from stroke_ray.throughput import STAGES, throughput_record
from stroke_ray.volumes import CaseError, Inputs, read_case

__all__ = [
    "SegmentConfig",
    "segment",
    "segment_definition",
    "CaseWork",
    "read_stage",
    "PlanePredictor",
    "CaseWriter",
    "write_stage",
]

logger = logging.getLogger(__name__)


@dataclass
class CaseWork:
    """One case on its way through the pipeline (a row's ``work`` column)."""

    case_id: str
    subject: str | None = None
    session: str | None = None
    reference_uri: str | None = None  # the image whose grid and header the masks get
    error: str | None = None
    seconds: float = 0.0
    prepared: Prepared | None = None
    header: nib.Nifti1Header | None = None  # the reference image's (NIfTI-1 or NIfTI-2)
    label: np.ndarray | None = None  # packed bits of the source-grid label
    spacing_mm: tuple[float, float, float] | None = None  # source voxel size
    predictions: dict[str, PlanePrediction] | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per stage
    cpu_seconds: float = 0.0  # process CPU seconds of the stages (all threads)
    slices: int = 0  # brain slices predicted over the planes
    predictor: dict[str, Any] | None = None  # where the model ran (machine, precision)

    def fail(self, err: Exception, stage: str) -> None:
        """Turn this case into an error that names the case, the file and the problem."""
        message = str(err) if isinstance(err, CaseError) else f"{type(err).__name__}: {err}"
        if not message.startswith(f"case {self.case_id}"):
            message = f"case {self.case_id}: {stage}: {message}"
        logger.warning("%s", message)
        self.error, self.prepared, self.predictions = message, None, None

    def unpacked_label(self) -> np.ndarray | None:
        """The label on the source grid."""
        if self.label is None or self.prepared is None:
            return None
        shape = self.prepared.geometry.source_shape
        return np.unpackbits(self.label, count=int(np.prod(shape))).reshape(shape)


class _StageTimer:
    """Adds a stage's wall and process CPU seconds to a case (a context)."""

    def __init__(self, work: CaseWork, stage: str) -> None:
        self.work, self.stage = work, stage

    def __enter__(self) -> _StageTimer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.wall
        self.work.stage_seconds[self.stage] = self.work.stage_seconds.get(self.stage, 0.0) + wall
        self.work.cpu_seconds += time.process_time() - self.cpu
        self.work.seconds += wall


def _options(options_ref: Any) -> StorageOptions:
    return ray.get(options_ref) if options_ref is not None else None


def read_stage(
    row: dict[str, Any],
    inputs: Inputs,
    options_ref: Any = None,
    spacing_mm: list[float] | None = None,
) -> dict[str, Any]:
    """Stage 1 (tasks): read, validate and prepare one case's ``inputs`` (the run's),
    resampled to the run's ``spacing_mm`` if any; a case row in, a work row out."""
    case = Case.from_dict(row)
    work = CaseWork(
        case_id=case.case_id,
        subject=case.subject,
        session=case.session,
        reference_uri=case.images.get(inputs.reference),
    )
    with _StageTimer(work, "read"):
        try:
            volumes = read_case(case, _options(options_ref), inputs=inputs)
            work.prepared = prepare(volumes, spacing_mm)
            work.header = volumes.header
            work.spacing_mm = volumes.spacing_mm
            work.label = None if volumes.label is None else np.packbits(volumes.label)
        except Exception as err:  # noqa: BLE001 - any failure becomes this case's error
            work.fail(err, "read")
    return {"case_id": case.case_id, "work": work}


class PlanePredictor:
    """Stage 2 (an actor): holds the plane models and predicts cases' slices."""

    def __init__(
        self,
        run_dir: str,
        run: dict[str, Any],
        *,
        use_gpu: bool = False,
        batch_size: int = 16,
        precision: str = "auto",
        tta: bool = False,
        threads: int | None = None,
        options_ref: Any = None,
    ) -> None:
        started = time.perf_counter()
        options = _options(options_ref)
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.models = load_plane_models(run, run_dir, self.device, options)
        self.settings = dict(
            batch_size=batch_size, precision=precision, tta=tta, device=self.device
        )
        self.machine = {
            **machine_info(),
            "device": self.device.type,
            "precision": resolve_precision(precision, self.device.type),
            "torch_threads": torch.get_num_threads(),
            "load_seconds": round(time.perf_counter() - started, 2),  # the models, once
        }

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        """Predict an ok case; pass a failed one through."""
        work: CaseWork = row["work"]
        if work.error is None:
            work.predictor = self.machine
            with _StageTimer(work, "predict"):
                try:
                    work.predictions = predict_planes(
                        self.models, work.prepared.image, work.prepared.brain, **self.settings
                    )
                    work.slices = sum(len(ix) for ix, _ in work.predictions.values())
                    work.prepared.image = None  # the writer needs the predictions, not the input
                except Exception as err:  # noqa: BLE001 - one bad case must not kill the actor
                    work.fail(err, "prediction")
        return row


@dataclass(frozen=True)
class WriteSettings:
    """What the write stage needs besides the row."""

    out: str
    run_id: str
    fusion: FusionSettings
    layout: str = "flat"
    reference: str = "flair"  # the run's reference sequence (the BIDS datatype follows it)
    bids_root: str | None = None  # the input BIDS dataset, linked from the derivatives


class CaseWriter:
    """Stage 3: restack, fuse, map back, then write the images and the metric rows."""

    def __init__(self, settings: WriteSettings, options: StorageOptions = None) -> None:
        self.settings = settings
        self.options = options
        self.common = {"run_id": settings.run_id, "fusion": settings.fusion.fusion}

    def _write(self, data: np.ndarray, header, uri: str) -> str:
        write_nifti_atomic(image_like(data, header), uri, self.options)
        return uri

    def _write_mask(self, work: CaseWork, mask: np.ndarray) -> str:
        """The fused mask, where the layout puts it (with its sidecar in BIDS)."""
        settings = self.settings
        uri = fused_mask_uri(
            settings.out, work.case_id, layout=settings.layout, subject=work.subject,
            session=work.session, reference=settings.reference,
        )  # fmt: skip
        self._write(mask, work.header, uri)
        if settings.layout == "bids":
            payload = sidecar(work.reference_uri, settings.bids_root)
            write_json(payload, sidecar_uri(uri), self.options)
        return uri

    def _write_images(self, work: CaseWork, result: CaseMasks) -> str:
        out, case_id, header = self.settings.out, work.case_id, work.header
        written = self._write_mask(work, result.masks["fused"])
        self._write(result.votes, header, mask_uri(out, case_id, "qc", "_votes"))
        if self.settings.fusion.save_planes:
            for plane in work.predictions:
                uri = mask_uri(out, case_id, "planes", f"_{plane}")
                self._write(result.masks[plane], header, uri)
            self._write(result.probability, header, mask_uri(out, case_id, "probability"))
            self._write(result.spread, header, mask_uri(out, case_id, "qc", "_spread"))
        return written

    def rows(self, work: CaseWork) -> list[dict[str, Any]]:
        """The case's outputs written; its metric rows returned."""
        prepared = work.prepared
        result = case_masks(
            work.predictions, prepared.brain, prepared.geometry, self.settings.fusion
        )
        written = self._write_images(work, result)
        common = {**self._common(work), "mask_uri": written}
        return case_rows(work.case_id, result, work.unpacked_label(), work.spacing_mm, common)

    def _common(self, work: CaseWork) -> dict[str, Any]:
        """Columns every row of the case shares."""
        return {**self.common, "subject": work.subject, "session": work.session}

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        """Write one case; return its summary row."""
        work: CaseWork = row["work"]
        with _StageTimer(work, "write") as timer:
            rows = None
            if work.error is None:
                try:
                    rows = self.rows(work)
                except Exception as err:  # noqa: BLE001 - one bad case must not stop the job
                    work.fail(err, "restack/vote/write")
            if rows is None:
                rows = [error_row(work.case_id, work.error, self._common(work))]
            seconds = work.seconds + time.perf_counter() - timer.wall
            for metric_row in rows:
                metric_row["seconds"] = seconds
            write_case_rows(rows, self.settings.out, work.case_id, self.options)
        fused = next(r for r in rows if r["source"] == "fused")
        return {
            "case_id": work.case_id,
            "status": fused["status"],
            "error": fused.get("error"),
            "dice": fused.get("dice"),
            "seconds": work.seconds,
            **{f"{stage}_seconds": work.stage_seconds.get(stage, 0.0) for stage in STAGES},
            "cpu_seconds": work.cpu_seconds,
            "slices": work.slices,
            "predictor": json.dumps(work.predictor) if work.predictor else None,
        }


def write_stage(row: dict[str, Any], settings: WriteSettings, options_ref: Any = None) -> dict:
    """Stage 3 (tasks): write one case; return its summary row."""
    return CaseWriter(settings, _options(options_ref))(row)


def threads_per_actor(node_cpus: list[float], num_actors: int) -> int:
    """Torch threads of a CPU model actor: its node's cores shared by the actors placed there.

    Actors spread over the nodes (``ceil(actors / nodes)`` on the busiest), and the smallest
    node counts: a thread per core, never more threads than cores (read and write tasks run
    beside the actors; two threads on two cores stay the fastest choice for the model).
    """
    if not node_cpus:
        return 1
    per_node = math.ceil(max(num_actors, 1) / len(node_cpus))
    return max(1, int(min(node_cpus)) // per_node)


def _threads_per_actor(config: SegmentConfig) -> int:
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    cpus = [float(r["CPU"]) for r in nodes if r.get("CPU")] or [float(os.cpu_count() or 1)]
    return threads_per_actor(cpus, config.num_actors)


def _plane_weights(config: SegmentConfig, run: dict[str, Any]) -> dict[str, float] | None:
    if "weighted" not in (config.fusion, *config.extra_fusions):
        return None
    if config.plane_weights:
        return config.weights_by_plane
    return {plane: float(values["val_dice"]) for plane, values in run["planes"].items()}


def segment_definition(config: SegmentConfig, run: dict[str, Any]) -> dict[str, Any]:
    """What defines a segmentation folder's masks: the run and the fusion settings."""
    definition = {
        "model": config.model,
        "run_definition": run.get("definition"),
        "planes": sorted(run["planes"]),
        "fusion": config.fusion,
        "plane_weights": _plane_weights(config, run),
        "extra_fusions": list(config.extra_fusions),
        "tta": config.tta,
        "precision": config.precision,
        "layout": config.layout,
    }
    if config.min_lesion_ml:  # absent = 0, as in folders written before the option existed
        definition["min_lesion_ml"] = float(config.min_lesion_ml)
    return definition


def _warnings(run: dict[str, Any], fusion: str) -> list[str]:
    planes = list(run["planes"])
    if len(planes) >= 3:
        return []
    rule = (
        f"a voxel is lesion where the planes' mean probability is at least {THRESHOLD:g}"
        if fusion == "soft"
        else "a voxel is lesion only where more than half of the (weighted) votes say so, so "
        "two planes must agree"
    )
    return [f"the run has {len(planes)} plane(s) {planes}, not three: {rule}"]


def _prepare_out(
    config: SegmentConfig,
    run: dict[str, Any],
    bids_root: str | None = None,
    notes: dict[str, Any] | None = None,
) -> set[str]:
    """Check and record what defines OUT (and describe it as a BIDS dataset with the bids
    layout); return the cases already finished there."""
    options = config.storage_options
    definition = segment_definition(config, run)
    settings_uri = join_uri(config.out, "segment.json")
    if exists(settings_uri, options) and not config.overwrite:
        recorded = read_json(settings_uri, options).get("definition")
        ensure_same_definition(config.out, recorded, definition, "--overwrite")
    warnings = _warnings(run, config.fusion)
    for warning in warnings:
        logger.warning("%s", warning)
    record = {
        **public_dict(config),
        "run_id": run.get("run_id"),
        "planes": list(run["planes"]),
        "definition": definition,
        "warnings": warnings,
        **(notes or {}),
    }
    write_json(record, settings_uri, options)
    if config.layout == "bids":
        write_dataset_files(config.out, bids_root, options)
    return set() if config.overwrite else finished_cases(config.out, options)


def _check_bids_names(cases: list[Case], reference: str) -> None:
    """Two cases whose ids reduce to one BIDS name would overwrite each other's mask."""
    owners: dict[str, list[str]] = {}
    for case in cases:
        uri = fused_mask_uri(
            "", case.case_id, layout="bids", subject=case.subject, session=case.session,
            reference=reference,
        )  # fmt: skip
        owners.setdefault(uri, []).append(case.case_id)
    clashes = [ids for ids in owners.values() if len(ids) > 1]
    if clashes:
        raise ManifestError(
            f"cases {clashes} would write the same BIDS mask (BIDS labels keep letters and "
            "digits only); give them subject/session columns or use --layout flat"
        )


def min_lesion_ml(config: SegmentConfig, run: dict[str, Any]) -> tuple[float, str]:
    """The minimum fused lesion size in ml and where it comes from: ``--min-lesion-ml`` if
    given, else the run's suggestion for the fusion mode (stroke_ray.validation), else 0."""
    if config.min_lesion_ml is not None:
        return float(config.min_lesion_ml), "--min-lesion-ml"
    suggested = run.get("suggested_min_lesion_ml") or {}
    if config.fusion in suggested:
        return float(suggested[config.fusion]), "run.json suggested_min_lesion_ml (validation)"
    return 0.0, "default (the run suggests none)"


def segment(config: SegmentConfig, progress=None) -> tuple[Any, dict[str, Any]]:
    """Segment a cohort with a trained run; return (metrics frame, summary)."""
    if config.fusion not in FUSION_MODES:
        raise ValueError(f"unknown fusion {config.fusion!r}; choose one of {FUSION_MODES}")
    config = replace(config, model=absolute_uri(config.model), out=absolute_uri(config.out))
    options = config.storage_options
    cohort = find_cohort(config.cohort, options)
    cases = cohort.cases
    run = finished_run(config.model, options)
    inputs = run_inputs(run)
    bids_root = absolute_uri(cohort.source).rstrip("/") if cohort.layout == "bids" else None
    if config.layout == "bids":
        _check_bids_names(cases, inputs.reference)
    size_ml, size_from = min_lesion_ml(config, run)
    config = replace(config, min_lesion_ml=size_ml)
    done = _prepare_out(config, run, bids_root, {"min_lesion_ml_from": size_from})
    todo = [case for case in cases if case.case_id not in done]
    logger.info(
        "%d cases, %d already finished, %d to segment",
        len(cases),
        len(cases) - len(todo),
        len(todo),
    )
    if todo:
        started = time.perf_counter()
        results, stats = _run_pipeline(config, run, todo, progress, bids_root)
        _write_throughput(config, results, time.perf_counter() - started, stats)
    return consolidate(config.out, options, case_ids=[case.case_id for case in cases])


def _predictor_machine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the model ran (from the first predicted case), else this machine."""
    for result in results:
        if result.get("predictor"):
            return json.loads(result["predictor"])
    return machine_info()


def _write_throughput(
    config: SegmentConfig, results: list[dict[str, Any]], wall_seconds: float, stats: str | None
) -> None:
    """OUT/throughput.json of this job (see :mod:`stroke_ray.throughput`)."""
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    record = throughput_record(
        results,
        wall_seconds=wall_seconds,
        cluster=ray.cluster_resources(),
        nodes=max(nodes, 1),
        num_actors=config.num_actors,
        gpus_per_actor=(config.gpus_per_actor or 1.0) if config.use_gpu else 0.0,
        price_per_hour=config.price_per_hour,
        machine=_predictor_machine(results),
        ray_data_stats=stats,
    )
    write_json(record, join_uri(config.out, "throughput.json"), config.storage_options)
    logger.info(
        "%d cases in %.1f s: %.1f cases/h, %.2f slices/s%s",
        record["cases"],
        wall_seconds,
        record["cases_per_hour"] or 0.0,
        record["slices_per_s"] or 0.0,
        ""
        if record["cost_per_1000_volumes"] is None
        else f", {record['cost_per_1000_volumes']:.2f} per 1,000 volumes",
    )


def _dataset_stats(dataset: Any) -> str | None:
    """Ray Data's per-operator stats of an executed dataset (None if Ray cannot say)."""
    try:
        return dataset.stats()
    except Exception as err:  # noqa: BLE001 - statistics must never fail a finished job
        logger.debug("no Ray Data stats: %s", err)
        return None


def _run_pipeline(
    config: SegmentConfig,
    run: dict[str, Any],
    todo: list[Case],
    progress,
    bids_root: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Run the Ray Data pipeline over the cases; their result rows and Ray Data's stats."""
    options_ref = ray.put(config.storage_options)
    inputs = run_inputs(run)
    settings = WriteSettings(
        out=config.out,
        run_id=str(run.get("run_id", "")),
        fusion=FusionSettings(
            fusion=config.fusion,
            plane_weights=_plane_weights(config, run),
            extra_fusions=tuple(config.extra_fusions),
            save_planes=config.save_planes,
            min_lesion_ml=config.min_lesion_ml or 0.0,
        ),
        layout=config.layout,
        reference=inputs.reference,
        bids_root=bids_root,
    )
    gpus = (config.gpus_per_actor or 1.0) if config.use_gpu else 0
    # rows carry a CaseWork object: Ray Data pickles it (saying so once per worker unless asked)
    ray.data.DataContext.get_current().enable_fallback_to_arrow_object_ext_type = True
    dataset = ray.data.from_items([case.to_dict() for case in todo], override_num_blocks=len(todo))
    # read and write are light tasks (0.25 CPU) kept apart from the model actors (1 CPU):
    # different resources stop Ray Data from fusing reading into the actor, so a case is
    # read while the previous one is predicted
    dataset = dataset.map(
        read_stage,
        fn_kwargs={
            "inputs": inputs,
            "options_ref": options_ref,
            "spacing_mm": run.get("spacing_mm"),
        },
        num_cpus=0.25,
    )
    dataset = dataset.map(
        PlanePredictor,
        fn_constructor_args=(config.model, run),
        fn_constructor_kwargs={
            "use_gpu": config.use_gpu,
            "batch_size": config.batch_size,
            "precision": config.precision,
            "tta": config.tta,
            "threads": None if config.use_gpu else _threads_per_actor(config),
            "options_ref": options_ref,
        },
        compute=ray.data.ActorPoolStrategy(size=config.num_actors),
        num_gpus=gpus,
        num_cpus=1,
    )
    dataset = dataset.map(
        write_stage, fn_kwargs={"settings": settings, "options_ref": options_ref}, num_cpus=0.25
    )
    results = []
    for result in dataset.iter_rows():
        results.append(result)
        if progress is not None:
            progress(result)
        if result["status"] == "error":
            logger.warning("%s", result["error"])
    return results, _dataset_stats(dataset)
