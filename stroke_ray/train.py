"""Ray Train: fit the axial, coronal and sagittal Res-UNets concurrently.

Arrangement: one ``TorchTrainer`` per plane, all launched together from driver threads
(``fit`` only waits on its controller). Each plane keeps its own data-parallel worker group
(``workers_per_plane``; with ``use_gpu`` a GPU each, or ``gpus_per_worker`` of one so three
planes share a card), its own checkpoints under ``RUN_DIR/ray/<plane>`` and its own
``FailureConfig``: a lost worker restarts that plane from its last checkpoint without
touching the other planes. On a CPU-only machine each worker asks for a fraction of a CPU so
three planes fit on two cores without deadlock.

The per-worker work (phases, epochs, validation, checkpoint state) lives in
:mod:`stroke_ray.train_loop`; this module only wires it to Ray: data shards, devices, DDP,
checkpoints and the run folder (:mod:`stroke_ray.runs`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch

from stroke_ray.cohort import Case, load_cohort
from stroke_ray.config import TrainConfig, is_scratch, public_dict, spacing_setting
from stroke_ray.fingerprint import ensure_same_definition
from stroke_ray.io import (
    StorageOptions,
    absolute_uri,
    filesystem,
    remove_tree,
    write_json,
    write_parquet,
)
from stroke_ray.losses import HybridLoss
from stroke_ray.model import build_model
from stroke_ray.preprocess import median_spacing, prepare, ras_spacing
from stroke_ray.runs import (
    history_uri,
    package_versions,
    plane_model_exists,
    previous_run,
    ray_storage_uri,
    run_definition,
    run_json_uri,
    save_plane_model,
)
from stroke_ray.slices import PlaneSlices
from stroke_ray.splits import split_cases
from stroke_ray.train_loop import (
    Phase,
    all_reduce,
    apply_phase,
    checkpoint_bytes,
    checkpoint_state,
    epoch_metrics,
    evaluate,
    load_checkpoint_state,
    phase,
    replicas_agree,
    restore_training,
    selection_score,
    train_one_epoch,
    training_batches,
)
from stroke_ray.volumes import CaseError, Inputs, read_case

__all__ = ["TrainConfig", "TrainError", "train", "train_plane_loop", "screen_cases"]

logger = logging.getLogger(__name__)
_CHECKPOINT_FILE = "state.pt"


class TrainError(RuntimeError):
    """Training cannot start or did not finish."""


# --------------------------------------------------------------------------- per worker


def _inputs(config: TrainConfig) -> Inputs:
    """The run's sequences, reference and resampling; TrainError when they do not fit."""
    try:
        return Inputs(config.sequences, config.reference, config.resample)
    except ValueError as err:
        raise TrainError(f"--sequences/--reference: {err}") from err


def _load_slices(
    case_dicts: list[dict],
    options: StorageOptions,
    plane: str,
    inputs: Inputs,
    spacing_mm: list[float] | None = None,
) -> tuple[PlaneSlices, dict[str, str]]:
    """This worker's cases as plane slices, and the reason for each case that failed."""
    prepared, failed = [], {}
    for values in case_dicts:
        try:
            case = read_case(Case.from_dict(values), options, inputs=inputs)
            prepared.append(prepare(case, spacing_mm))
        except CaseError as err:
            logger.warning("plane %s: skipping %s", plane, err)
            failed[values["case_id"]] = str(err)
    return PlaneSlices.from_cases(prepared, plane), failed


def _gather_failures(failed: dict[str, str]) -> dict[str, str]:
    """Every worker's failed cases (one dict)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return dict(failed)
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, failed)
    return {case: reason for part in gathered for case, reason in part.items()}


def _checkpoint_state_of(checkpoint: ray.train.Checkpoint | None) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with (
        checkpoint.as_directory() as folder,
        open(os.path.join(folder, _CHECKPOINT_FILE), "rb") as handle,
    ):
        return load_checkpoint_state(handle.read())


def _report(metrics: dict, state: dict | None) -> None:
    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, _CHECKPOINT_FILE), "wb") as handle:
            handle.write(checkpoint_bytes(state))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _epoch_bar(config: TrainConfig, plane: str, start_epoch: int):
    """A per-plane epoch bar drawn by the driver (Ray's tqdm), when asked for."""
    if not config.progress_bars:
        return None
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(desc=f"training {plane}", total=config.epochs, unit="epoch")
    bar.update(start_epoch)
    return bar


def _check_slices(plane: str, rank: int, train_data: PlaneSlices, val_slices: int) -> None:
    if not len(train_data):
        raise TrainError(
            f"plane {plane}, worker {rank}: no usable training slices (every case of this "
            "worker's share failed to load; see the warnings above)"
        )
    if not val_slices:
        raise TrainError(
            f"plane {plane}: no usable validation slices on any worker (every validation "
            "case failed to load; see the warnings above)"
        )


def _rank0_state(model, optimizer, progress, failed: dict[str, str], rank: int) -> dict | None:
    """The checkpoint state after the last recorded epoch; written by rank 0 only."""
    if rank != 0:
        return None
    state = checkpoint_state(
        model, optimizer, epoch=int(progress.history[-1]["epoch"]),
        best_model=progress.best_model, best_dice=progress.best_dice, history=progress.history,
        best_score=progress.best_score,
    )  # fmt: skip
    state["failed_cases"] = failed
    return state


def quiet_ray_train_reports() -> None:
    """Ray Train logs every report and checkpoint of a worker at INFO (a whole TrainingReport
    repr per plane and epoch); the loop's own epoch line says what matters, so only Ray
    Train's warnings stay. Internal Ray modules: where they move, nothing changes."""
    try:
        from ray.train.v2._internal.execution import context, storage
    except ImportError:
        return
    for module in (context, storage):
        module_logger = getattr(module, "logger", None)
        if isinstance(module_logger, logging.Logger):
            module_logger.setLevel(logging.WARNING)


def train_plane_loop(loop_config: dict) -> None:
    """Ray Train worker loop for one plane: shards, device and DDP around train_loop."""
    quiet_ray_train_reports()
    config: TrainConfig = loop_config["config"]
    plane: str = loop_config["plane"]
    options = ray.get(loop_config["storage_options_ref"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.seed)

    inputs = _inputs(config)
    spacing_mm = loop_config.get("spacing_mm")
    train_data, failed_train = _load_slices(
        loop_config["train_cases"][rank::world], options, plane, inputs, spacing_mm
    )
    val_data, failed_val = _load_slices(
        loop_config["val_cases"][rank::world], options, plane, inputs, spacing_mm
    )
    failed = _gather_failures({**failed_train, **failed_val})
    val_slices = int(all_reduce(torch.tensor([len(val_data)]), device).item())
    _check_slices(plane, rank, train_data, val_slices)

    model = build_model(config.model, config.weights, options).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    progress = restore_training(model, optimizer, _checkpoint_state_of(ray.train.get_checkpoint()))
    loss_fn = HybridLoss(
        alpha=config.alpha, beta=config.beta, lesion_weight=config.lesion_weight
    ).to(device)
    rng = np.random.default_rng([config.seed, rank, progress.next_epoch])
    augment_rng = np.random.default_rng([config.seed, rank, progress.next_epoch, 1])
    own_steps = math.ceil(len(train_data) / config.batch_size)
    steps = int(all_reduce(torch.tensor([own_steps]), device, op="max").item())
    steps = min(steps, config.max_steps_per_epoch or steps)

    if progress.next_epoch >= config.epochs:
        # finished before its record was written: report the last epoch again, so the
        # plane's result carries its checkpoint
        _report(progress.history[-1], _rank0_state(model, optimizer, progress, failed, rank))
        return
    wrapped, wrapped_phase = None, None
    bar = _epoch_bar(config, plane, progress.next_epoch) if rank == 0 else None
    for epoch in range(progress.next_epoch, config.epochs):
        started = time.perf_counter()
        current: Phase = phase(epoch, config)
        apply_phase(model, optimizer, current)
        if wrapped is None or current.encoder_frozen != wrapped_phase:
            # DDP registers the parameters that need gradients when it wraps the model
            wrapped = ray.train.torch.prepare_model(
                model, move_to_device=False, parallel_strategy_kwargs={}
            )
            wrapped_phase = current.encoder_frozen
        batches = training_batches(train_data, config, steps, rng, augment_rng)
        train_loss, done = train_one_epoch(
            wrapped, model.encoder, batches, optimizer, loss_fn, device,
            encoder_frozen=current.encoder_frozen,
        )  # fmt: skip
        # the bare model: DDP's forward syncs buffers, a collective that workers with fewer
        # validation batches would never join
        validation = evaluate(model, val_data, loss_fn, device, config.batch_size)
        score = selection_score(validation, config.checkpoint_metric)
        metrics = epoch_metrics(
            plane, epoch, current, train_loss, done, validation, len(train_data), started,
            replicas_in_sync=replicas_agree(model, device), score=score,
        )  # fmt: skip
        if device.type == "cuda":
            metrics["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        progress.record(model, metrics, validation.dice, score)
        logger.info(
            "plane %s epoch %d/%d: train loss %.4f, val loss %.4f, val Dice %.4f, "
            "val lesion F1 %.4f",
            plane, epoch + 1, config.epochs, train_loss, validation.loss, validation.dice,
            validation.lesion_f1,
        )  # fmt: skip
        _report(metrics, _rank0_state(model, optimizer, progress, failed, rank))
        if bar is not None:
            bar.update(1)


# --------------------------------------------------------------------------- driver


@ray.remote(num_cpus=0.25)
def _screen_case(
    values: dict, options: StorageOptions, inputs: Inputs
) -> tuple[str | None, tuple | None]:
    """(why the case cannot be used, or None; its voxel size along RAS axes)."""
    case = Case.from_dict(values)
    if not case.label:
        return f"case {case.case_id}: no label, cannot be used for training", None
    try:
        volumes = read_case(case, options, inputs=inputs)
    except CaseError as err:
        return str(err), None
    return None, ras_spacing(volumes.affine, volumes.spacing_mm)


def screen_cases(
    cases: list[Case], options: StorageOptions, inputs: Inputs
) -> tuple[list[Case], dict[str, str], dict[str, tuple]]:
    """Read every case once in parallel: the usable cases, reasons for the rest, and each
    usable case's RAS voxel size."""
    answers = ray.get([_screen_case.remote(case.to_dict(), options, inputs) for case in cases])
    skipped = {
        case.case_id: reason for case, (reason, _) in zip(cases, answers, strict=True) if reason
    }
    for reason in skipped.values():
        logger.warning("training skips %s", reason)
    spacings = {
        case.case_id: spacing for case, (reason, spacing) in zip(cases, answers, strict=True)
        if not reason
    }  # fmt: skip
    return [case for case in cases if case.case_id not in skipped], skipped, spacings


def resolve_spacing(
    setting, spacings: list[tuple[float, float, float]]
) -> tuple[float, float, float] | None:
    """The voxel size cases are resampled to (RAS, mm), None for 'source': 'auto' is the
    per-axis median of ``spacings`` (the training cohort's), as nnU-Net plans it."""
    value = spacing_setting(setting)
    if value == "source":
        return None
    if value == "auto":
        return median_spacing(spacings)
    return value  # type: ignore[return-value]


def _storage(run_dir: str, options: StorageOptions) -> tuple[str, Any]:
    """Ray Train storage path and filesystem (fsspec-backed for URIs)."""
    storage = ray_storage_uri(run_dir)
    if "://" not in storage:
        return os.path.abspath(storage), None
    import pyarrow.fs

    fs, path = filesystem(storage, options)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def _cpus_per_worker(config: TrainConfig, planes: int) -> float:
    if config.cpus_per_worker:
        return config.cpus_per_worker
    if config.use_gpu:
        return 1.0
    total = float(ray.cluster_resources().get("CPU", 1.0))
    share = total / max(planes * config.workers_per_plane, 1)
    return float(np.clip(np.floor(share * 4) / 4, 0.25, 1.0))


def _fit_plane(config: TrainConfig, plane: str, loop_inputs: dict, cpus: float):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage_path, storage_filesystem = _storage(config.out, config.storage_options)
    resources = {"CPU": cpus, **({"GPU": config.gpus_per_worker or 1.0} if config.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker=train_plane_loop,
        train_loop_config={**loop_inputs, "plane": plane},
        scaling_config=ScalingConfig(
            num_workers=config.workers_per_plane,
            use_gpu=config.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=plane,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=config.max_failures),
        ),
    )
    return trainer.fit()


def _result(plane: str, future) -> Any:
    """A plane's fit result; a failed plane becomes a TrainError naming it."""
    try:
        return future.result()
    except ray.train.TrainingFailedError as err:
        raise TrainError(f"plane {plane}: training failed: {err}") from err


def _best_epoch(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The kept epoch's validation figures (highest score, the earliest on a tie)."""
    best = max(history, key=lambda row: (row.get("val_score", row["val_dice"]), -row["epoch"]))
    return {
        "val_dice": float(best["val_dice"]),
        "val_lesion_f1": float(best.get("val_lesion_f1", float("nan"))),
        "val_score": float(best.get("val_score", best["val_dice"])),
        "best_epoch": int(best["epoch"]),
    }


def _collect(result, config: TrainConfig, plane: str) -> dict[str, Any]:
    """Copy a finished plane's best weights into the run folder; return its final state."""
    if result.checkpoint is None:
        raise TrainError(f"plane {plane}: training ended without a checkpoint")
    state = _checkpoint_state_of(result.checkpoint)
    save_plane_model(state["best_model"], config.out, plane, config.storage_options)
    return state


def _resolved(config: TrainConfig) -> TrainConfig:
    """Local paths made absolute (Ray workers run in another working directory), and a
    model input channel per sequence."""
    weights = config.weights
    if not is_scratch(weights) and weights != "imagenet":
        weights = absolute_uri(weights)
    return replace(
        config,
        cohort=absolute_uri(config.cohort),
        out=absolute_uri(config.out),
        weights=weights,
        model=replace(config.model, in_channels=len(config.sequences)),
    )


@ray.remote(num_cpus=1)
def _validate_task(run_dir: str, run: dict, case_dicts: list[dict], options, use_gpu: bool):
    from stroke_ray.validation import validate_run

    return validate_run(run_dir, run, case_dicts, options, use_gpu=use_gpu)


def _fused_validation(config: TrainConfig, run: dict, case_dicts: list[dict]) -> dict[str, Any]:
    """The planes and fusion modes scored on the validation cases (stroke_ray.validation)."""
    task = _validate_task.options(num_gpus=1 if config.use_gpu else 0)
    try:
        return ray.get(
            task.remote(config.out, run, case_dicts, config.storage_options, config.use_gpu)
        )
    except Exception as err:  # noqa: BLE001 - the planes are trained: report, do not fail
        logger.warning("fused validation failed, no minimum lesion size suggested: %s", err)
        return {"error": f"{type(err).__name__}: {err}"}


def _split(config: TrainConfig, usable: list[Case], total: int, skipped) -> dict[str, list[str]]:
    if len(usable) < config.min_cases:
        raise TrainError(
            f"only {len(usable)} usable labelled case(s) of {total} in {config.cohort} "
            f"(need {config.min_cases}); skipped: {skipped}"
        )
    split = split_cases([case.case_id for case in usable], config.val_fraction, config.seed)
    if len(split["train"]) < config.workers_per_plane:
        raise TrainError(
            f"--workers-per-plane {config.workers_per_plane} exceeds the {len(split['train'])} "
            "training case(s): each data-parallel worker needs at least one case"
        )
    return split


def _check_definition(
    config: TrainConfig, previous: dict[str, Any] | None, split: dict[str, list[str]] | None
) -> dict[str, Any]:
    """This call's definition (without the split, and an ``auto`` spacing, until the cases
    are read); a previous run folder of another definition stops the run here."""
    definition = run_definition(config, split)
    if previous is not None:
        recorded = previous.get("definition")
        if recorded is not None and split is None:
            unknown = {"split"} | (
                {"spacing"} if spacing_setting(config.spacing) == "auto" else set()
            )
            recorded = {key: value for key, value in recorded.items() if key not in unknown}
            definition = {key: value for key, value in definition.items() if key not in unknown}
        ensure_same_definition(config.out, recorded, definition, "--restart")
    return definition


def train(config: TrainConfig) -> dict[str, Any]:
    """Train the plane models and write the run folder; return the run summary."""
    config = _resolved(config)
    spacing_setting(config.spacing)  # a bad --spacing fails before any work
    options = config.storage_options
    inputs = _inputs(config)
    if config.restart and remove_tree(config.out, options):
        logger.info("--restart: removed %s", config.out)
    previous, history = previous_run(config.out, options)
    _check_definition(config, previous, None)  # options first: before reading any case
    build_model(config.model, config.weights, options)  # bad weights fail before any work
    cases = load_cohort(config.cohort, options)
    usable, skipped, spacings = screen_cases(cases, options, inputs)
    split = _split(config, usable, len(cases), skipped)
    spacing_mm = resolve_spacing(config.spacing, [spacings[case.case_id] for case in usable])
    config = replace(config, spacing=spacing_mm or ("source",))
    definition = _check_definition(config, previous, split)
    recorded = (previous or {}).get("planes", {})
    todo = [
        p for p in config.planes
        if p not in recorded or not plane_model_exists(config.out, p, options)
    ]  # fmt: skip
    run = {
        "run_id": os.path.basename(os.path.normpath(config.out)),
        "status": "running",
        "definition": definition,
        "config": public_dict(config),
        "model": config.model.to_dict(),
        "versions": package_versions(),
        "split": split,
        "spacing_mm": list(spacing_mm) if spacing_mm else None,
        "skipped_cases": skipped,
        "planes": {p: v for p, v in recorded.items() if p not in todo},
    }
    write_json(run, run_json_uri(config.out), options)
    by_id = {case.case_id: case.to_dict() for case in usable}
    loop_inputs = {
        "config": replace(config, storage_options=None),
        "storage_options_ref": ray.put(options),
        "train_cases": [by_id[case_id] for case_id in split["train"]],
        "val_cases": [by_id[case_id] for case_id in split["val"]],
        "spacing_mm": spacing_mm,
    }
    cpus = _cpus_per_worker(config, len(todo))
    logger.info("training planes %s (%.2f CPU per worker)", todo, cpus)
    with ThreadPoolExecutor(max_workers=max(len(todo), 1)) as pool:
        futures = {p: pool.submit(_fit_plane, config, p, loop_inputs, cpus) for p in todo}
        results = {p: _result(p, future) for p, future in futures.items()}
    frames = [history[~history["plane"].isin(todo)]] if not history.empty else []
    for plane, result in results.items():
        state = _collect(result, config, plane)
        run["planes"][plane] = {
            **_best_epoch(state["history"]),
            "epochs": len(state["history"]),
            "failed_cases": dict(state.get("failed_cases", {})),
        }
        frames.append(pd.DataFrame(state["history"]))
    missing = [p for p in config.planes if p not in run["planes"]]
    if missing:
        raise TrainError(f"{config.out}: planes {missing} have no result; rerun to resume them")
    write_parquet(pd.concat(frames, ignore_index=True), history_uri(config.out), options)
    run["validation"] = _fused_validation(config, run, [by_id[c] for c in split["val"]])
    run["suggested_min_lesion_ml"] = run["validation"].get("suggested_min_lesion_ml", {})
    run["status"] = "finished"
    write_json(run, run_json_uri(config.out), options)
    return run
