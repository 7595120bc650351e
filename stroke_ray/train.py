"""Ray Train: fit the axial, coronal and sagittal Res-UNets concurrently.

Arrangement: one ``TorchTrainer`` per plane, all three launched together from driver
threads (``fit`` only waits on its controller actor). Each plane therefore keeps its own
data-parallel worker group (``workers_per_plane``, one GPU each with ``use_gpu``), its own
checkpoints under ``RUN_DIR/ray/<plane>`` and its own ``FailureConfig``: a lost worker
restarts that plane's group from its last checkpoint without touching the other planes.
On a CPU-only machine each worker asks for a fraction of a CPU so three planes fit on two
cores without deadlock.

Schedule: with pretrained weights (``imagenet`` or a file) the encoder is frozen for
``freeze_epochs`` epochs (decoder and head learn at ``lr``), then the whole network is
fine-tuned at ``finetune_lr``. With ``weights="none"`` every layer trains from the start
at ``lr``. Validation Dice is pooled over every brain slice of the validation cases (sum
of TP/FP/FN over the plane), so it equals the Dice of the restacked validation volumes.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch

from stroke_ray.cohort import Case, load_cohort
from stroke_ray.io import StorageOptions, absolute_uri
from stroke_ray.losses import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_LESION_WEIGHT, HybridLoss
from stroke_ray.metrics import ratios_from_counts
from stroke_ray.model import ModelConfig, build_model, set_encoder_trainable
from stroke_ray.planes import PLANES
from stroke_ray.preprocess import prepare
from stroke_ray.runs import (
    history_uri,
    package_versions,
    plane_model_exists,
    ray_storage_uri,
    read_json,
    read_parquet,
    run_json_uri,
    save_plane_model,
    write_json,
    write_parquet,
)
from stroke_ray.slices import DEFAULT_LESION_OVERSAMPLE, PlaneSlices
from stroke_ray.splits import split_cases
from stroke_ray.volumes import CaseError, read_case

__all__ = ["TrainConfig", "TrainError", "train", "train_plane_loop", "screen_cases"]

logger = logging.getLogger(__name__)
_CHECKPOINT_FILE = "state.pt"


class TrainError(RuntimeError):
    """Training cannot start or did not finish."""


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI fills it, Ray workers receive it."""

    cohort: str
    out: str
    encoder_name: str = "resnet50"
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    weights: str = "imagenet"
    epochs: int = 10
    freeze_epochs: int = 3
    lr: float = 1e-3
    finetune_lr: float = 1e-4
    batch_size: int = 8
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    lesion_weight: float = DEFAULT_LESION_WEIGHT
    lesion_oversample: float = DEFAULT_LESION_OVERSAMPLE
    val_fraction: float = 0.2
    seed: int = 0
    max_steps_per_epoch: int | None = None
    planes: tuple[str, ...] = PLANES
    use_gpu: bool = False
    workers_per_plane: int = 1
    cpus_per_worker: float | None = None
    max_failures: int = 2
    min_cases: int = 2
    restart: bool = False
    progress_bars: bool = False
    storage_options: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def model_config(self) -> ModelConfig:
        """The architecture part of the config."""
        return ModelConfig(encoder_name=self.encoder_name, decoder_channels=self.decoder_channels)

    @property
    def effective_freeze_epochs(self) -> int:
        """Frozen-encoder epochs: none when training from scratch."""
        return 0 if self.weights in ("none", "") else min(self.freeze_epochs, self.epochs)

    def public_dict(self) -> dict[str, Any]:
        """The config as written to run.json: no credentials."""
        values = asdict(self)
        values.pop("storage_options")
        values["decoder_channels"] = list(self.decoder_channels)
        values["planes"] = list(self.planes)
        return values


# --------------------------------------------------------------------------- per worker


def _load_prepared(case_dicts: list[dict], options: StorageOptions, plane: str) -> list:
    prepared = []
    for values in case_dicts:
        try:
            prepared.append(prepare(read_case(Case(**values), options)))
        except CaseError as err:
            logger.warning("plane %s: skipping %s", plane, err)
    return prepared


def _sync_counts(values: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(values)
    return values


def _max_across_workers(value: int) -> int:
    tensor = torch.tensor([value], dtype=torch.int64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return int(tensor.item())


def _validate(model, data: PlaneSlices, loss_fn, device, batch_size: int) -> tuple[float, float]:
    """Mean loss and pooled lesion Dice over every validation slice (all workers)."""
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64)  # loss*n, n, tp, fp, fn
    with torch.no_grad():
        for images, targets in data.in_order(batch_size):
            images, targets = images.to(device), targets.to(device)
            logits = model(images)
            predicted = logits.argmax(dim=1)
            sums[0] += float(loss_fn(logits, targets)) * len(images)
            sums[1] += len(images)
            sums[2] += float(((predicted == 1) & (targets == 1)).sum())
            sums[3] += float(((predicted == 1) & (targets == 0)).sum())
            sums[4] += float(((predicted == 0) & (targets == 1)).sum())
    loss_sum, count, tp, fp, fn = _sync_counts(sums).tolist()
    return loss_sum / max(count, 1.0), ratios_from_counts(tp, fp, fn, 0)["dice"]


def _load_state(checkpoint: ray.train.Checkpoint) -> dict[str, Any]:
    """A checkpoint's state, its history rebuilt as one dict per epoch."""
    with checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, _CHECKPOINT_FILE), weights_only=True)
    state["history"] = [
        dict(zip(state["history_keys"], row, strict=True)) for row in state["history"]
    ]
    return state


def _restore_state(model, optimizer) -> tuple[int, list[dict], dict, float]:
    """Resume from Ray's last checkpoint: (next epoch, history, best weights, best Dice)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, [], {}, -1.0
    state = _load_state(checkpoint)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    logger.info("resuming from checkpoint after epoch %d", int(state["epoch"]))
    return int(state["epoch"]) + 1, state["history"], state["best_model"], float(state["best_dice"])


def _report(metrics: dict, state: dict | None) -> None:
    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, os.path.join(folder, _CHECKPOINT_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _set_phase(model, optimizer, *, frozen: bool, lr: float) -> None:
    set_encoder_trainable(model, not frozen)
    for group in optimizer.param_groups:
        group["lr"] = lr


def _epoch_bar(config: TrainConfig, plane: str, start_epoch: int):
    """A per-plane epoch bar drawn by the driver (Ray's tqdm), when asked for."""
    if not config.progress_bars:
        return None
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(desc=f"training {plane}", total=config.epochs, unit="epoch")
    bar.update(start_epoch)
    return bar


def train_plane_loop(loop_config: dict) -> None:
    """Ray Train worker loop for one plane (also runs without Ray in unit tests)."""
    config: TrainConfig = loop_config["config"]
    plane: str = loop_config["plane"]
    options = ray.get(loop_config["storage_options_ref"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config.seed)
    device = ray.train.torch.get_device()

    train_data = PlaneSlices.from_cases(
        _load_prepared(loop_config["train_cases"][rank::world], options, plane), plane
    )
    val_data = PlaneSlices.from_cases(
        _load_prepared(loop_config["val_cases"][rank::world], options, plane), plane
    )
    if not len(train_data) or not len(val_data):
        raise TrainError(
            f"plane {plane}, worker {rank}: no usable {'training' if not len(train_data) else 'validation'} "
            "slices (every assigned case failed to load; see the warnings above)"
        )
    model = build_model(config.model_config, config.weights, options)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    start_epoch, history, best_model, best_dice = _restore_state(model, optimizer)
    loss_fn = HybridLoss(alpha=config.alpha, beta=config.beta, lesion_weight=config.lesion_weight)
    loss_fn = loss_fn.to(device)
    rng = np.random.default_rng([config.seed, rank, start_epoch])
    steps = _max_across_workers(-(-len(train_data) // config.batch_size))
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)

    wrapped = None
    bar = _epoch_bar(config, plane, start_epoch) if rank == 0 else None
    for epoch in range(start_epoch, config.epochs):
        frozen = epoch < config.effective_freeze_epochs
        lr = config.lr if frozen or config.effective_freeze_epochs == 0 else config.finetune_lr
        _set_phase(model, optimizer, frozen=frozen, lr=lr)
        if wrapped is None or epoch == config.effective_freeze_epochs:
            wrapped = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={})
        started = time.perf_counter()
        wrapped.train()
        if frozen:
            model.encoder.eval()  # frozen encoder: keep its batch-norm statistics
        loss_total = 0.0
        for images, targets in train_data.sample_batches(
            rng,
            batch_size=config.batch_size,
            steps=steps,
            lesion_oversample=config.lesion_oversample,
        ):
            images, targets = images.to(device), targets.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(wrapped(images), targets)
            loss.backward()
            optimizer.step()
            loss_total += float(loss.detach())
        val_loss, val_dice = _validate(wrapped, val_data, loss_fn, device, config.batch_size)
        metrics = {
            "plane": plane,
            "epoch": epoch,
            "train_loss": loss_total / max(steps, 1),
            "val_loss": val_loss,
            "val_dice": val_dice,
            "lr": lr,
            "encoder_frozen": frozen,
            "steps": steps,
            "train_slices": len(train_data),
            "seconds": time.perf_counter() - started,
        }
        history.append(metrics)
        logger.info(
            "plane %s epoch %d/%d: train loss %.4f, val loss %.4f, val Dice %.4f",
            plane, epoch + 1, config.epochs, metrics["train_loss"], val_loss, val_dice,
        )  # fmt: skip
        if val_dice > best_dice:
            best_dice = val_dice
            best_model = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        state = None
        if rank == 0:
            keys = list(history[0])
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "best_model": best_model,
                "best_dice": best_dice,
                "history_keys": keys,
                "history": [[row[k] for k in keys] for row in history],
            }
        _report(metrics, state)
        if bar is not None:
            bar.update(1)


# --------------------------------------------------------------------------- driver


@ray.remote(num_cpus=0.25)
def _screen_case(values: dict, options: StorageOptions) -> str | None:
    case = Case(**values)
    if not case.label:
        return f"case {case.case_id}: no label, cannot be used for training"
    try:
        read_case(case, options)
    except CaseError as err:
        return str(err)
    return None


def screen_cases(cases: list[Case], options: StorageOptions) -> tuple[list[Case], dict[str, str]]:
    """Read every case once in parallel; return the usable ones and reasons for the rest."""
    reasons = ray.get([_screen_case.remote(case.to_dict(), options) for case in cases])
    skipped = {case.case_id: reason for case, reason in zip(cases, reasons, strict=True) if reason}
    for reason in skipped.values():
        logger.warning("training skips %s", reason)
    return [case for case in cases if case.case_id not in skipped], skipped


def _storage(run_dir: str, options: StorageOptions) -> tuple[str, Any]:
    """Ray Train storage path and filesystem (fsspec-backed for URIs)."""
    storage = ray_storage_uri(run_dir)
    if "://" not in storage:
        return os.path.abspath(storage), None
    import fsspec
    import pyarrow.fs

    fs, path = fsspec.core.url_to_fs(storage, **dict(options or {}))
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

    storage_path, filesystem = _storage(config.out, config.storage_options)
    resources = {"CPU": cpus, **({"GPU": 1} if config.use_gpu else {})}
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
            storage_filesystem=filesystem,
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


def _collect(result, config: TrainConfig, plane: str) -> tuple[float, list[dict]]:
    """Copy a finished plane's best weights into the run folder; return (Dice, history)."""
    if result.checkpoint is None:
        raise TrainError(f"plane {plane}: training ended without a checkpoint")
    state = _load_state(result.checkpoint)
    save_plane_model(state["best_model"], config.out, plane, config.storage_options)
    return float(state["best_dice"]), state["history"]


def _clear_run(config: TrainConfig) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(config.out, **dict(config.storage_options or {}))
    if fs.exists(path):
        logger.info("--restart: removing %s", config.out)
        fs.rm(path, recursive=True)


def _previous_results(config: TrainConfig) -> tuple[dict, pd.DataFrame]:
    try:
        run = read_json(run_json_uri(config.out), config.storage_options)
        history = read_parquet(history_uri(config.out), config.storage_options)
    except Exception:  # noqa: BLE001 - no previous run, or an unfinished one
        return {}, pd.DataFrame()
    return run.get("planes", {}), history


def train(config: TrainConfig) -> dict[str, Any]:
    """Train the plane models and write the run folder; return the run summary."""
    weights = (
        config.weights
        if config.weights in ("imagenet", "none", "")
        else absolute_uri(config.weights)
    )
    config = replace(
        config, cohort=absolute_uri(config.cohort), out=absolute_uri(config.out), weights=weights
    )
    if config.restart:
        _clear_run(config)
    build_model(config.model_config, config.weights, config.storage_options)  # fail fast
    cases = load_cohort(config.cohort, config.storage_options)
    usable, skipped = screen_cases(cases, config.storage_options)
    if len(usable) < config.min_cases:
        raise TrainError(
            f"only {len(usable)} usable labelled case(s) of {len(cases)} in {config.cohort} "
            f"(need {config.min_cases}); skipped: {skipped}"
        )
    split = split_cases([case.case_id for case in usable], config.val_fraction, config.seed)
    by_id = {case.case_id: case.to_dict() for case in usable}
    loop_inputs = {
        "config": replace(config, storage_options=None),
        "storage_options_ref": ray.put(config.storage_options),
        "train_cases": [by_id[case_id] for case_id in split["train"]],
        "val_cases": [by_id[case_id] for case_id in split["val"]],
    }
    previous, history = _previous_results(config)
    todo = [
        p for p in config.planes if not plane_model_exists(config.out, p, config.storage_options)
    ]
    run = {
        "run_id": os.path.basename(os.path.normpath(config.out)),
        "status": "running",
        "config": config.public_dict(),
        "model": config.model_config.to_dict(),
        "versions": package_versions(),
        "split": split,
        "skipped_cases": skipped,
        "planes": {p: v for p, v in previous.items() if p not in todo},
    }
    write_json(run, run_json_uri(config.out), config.storage_options)
    cpus = _cpus_per_worker(config, len(todo))
    logger.info("training planes %s (%.2f CPU per worker)", todo, cpus)
    with ThreadPoolExecutor(max_workers=max(len(todo), 1)) as pool:
        futures = {p: pool.submit(_fit_plane, config, p, loop_inputs, cpus) for p in todo}
        results = {p: _result(p, future) for p, future in futures.items()}
    frames = [history[~history["plane"].isin(todo)]] if not history.empty else []
    for plane, result in results.items():
        best_dice, plane_history = _collect(result, config, plane)
        run["planes"][plane] = {"val_dice": best_dice, "epochs": len(plane_history)}
        frames.append(pd.DataFrame(plane_history))
    history = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    write_parquet(history, history_uri(config.out), config.storage_options)
    run["status"] = "finished"
    write_json(run, run_json_uri(config.out), config.storage_options)
    return run
