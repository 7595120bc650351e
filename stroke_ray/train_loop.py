"""One plane's training, as plain functions that run without Ray (the shape of torchvision's
segmentation reference): the phase rule, one epoch of training, the validation pass, and the
checkpoint state. ``stroke_ray.train`` wires them to Ray Train (devices, DDP, reporting).

GPU rules, kept here by construction:
- collectives run on the worker's device (NCCL has no CPU tensors): :func:`all_reduce`;
- a checkpoint holds CPU tensors only and is read with ``map_location="cpu"``
  (:func:`checkpoint_state`, :func:`load_checkpoint_state`), so a CPU head can read what a
  GPU worker wrote;
- optimizer state is loaded after the model is on its device (:func:`restore_training`),
  so Adam's moments live beside their parameters after a restart.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from stroke_ray.augment import augment_batches
from stroke_ray.config import TrainConfig
from stroke_ray.metrics import lesion_detection, ratios_from_counts
from stroke_ray.model import set_encoder_trainable
from stroke_ray.slices import PlaneSlices

__all__ = [
    "Phase",
    "phase",
    "apply_phase",
    "Progress",
    "epoch_metrics",
    "all_reduce",
    "train_one_epoch",
    "training_batches",
    "replicas_agree",
    "evaluate",
    "Evaluation",
    "selection_score",
    "to_cpu",
    "checkpoint_state",
    "checkpoint_bytes",
    "load_checkpoint_state",
    "restore_training",
]


@dataclass(frozen=True)
class Phase:
    """What an epoch trains and how fast."""

    encoder_frozen: bool
    lr: float


COSINE_FLOOR = 0.05  # the cosine schedule decays to this share of the phase's learning rate


def _decayed(lr: float, step: int, steps: int, schedule: str) -> float:
    """``lr`` at epoch ``step`` of a phase of ``steps`` epochs (cosine: from lr to 5 % of it)."""
    if schedule == "constant" or steps <= 1:
        return lr
    progress = step / (steps - 1)
    return lr * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))


def phase(epoch: int, config: TrainConfig) -> Phase:
    """The transfer-learning schedule: frozen encoder at ``lr``, then fine-tuning at ``finetune_lr``.

    From scratch every epoch trains everything at ``lr``; with pretrained weights the first
    ``freeze_epochs`` epochs train the decoder only at ``lr``, every later epoch (all of them
    when ``freeze_epochs`` is 0) fine-tunes the whole network at ``finetune_lr``. With
    ``lr_schedule="cosine"`` each phase starts at its rate and decays to 5 % of it by its
    last epoch (per epoch).
    """
    schedule = config.lr_schedule
    if config.scratch:
        return Phase(False, _decayed(config.lr, epoch, config.epochs, schedule))
    frozen = min(config.freeze_epochs, config.epochs)
    if epoch < config.freeze_epochs:
        return Phase(True, _decayed(config.lr, epoch, frozen, schedule))
    return Phase(
        False, _decayed(config.finetune_lr, epoch - frozen, config.epochs - frozen, schedule)
    )


def apply_phase(model: torch.nn.Module, optimizer: torch.optim.Optimizer, current: Phase) -> None:
    """Freeze or unfreeze the encoder and set the learning rate."""
    set_encoder_trainable(model, not current.encoder_frozen)
    for group in optimizer.param_groups:
        group["lr"] = current.lr


def all_reduce(values: torch.Tensor, device: torch.device, op: str = "sum") -> torch.Tensor:
    """Reduce ``values`` over the process group on ``device``; a CPU copy of the result.

    Without a process group (one worker, unit tests) the values come back unchanged.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values.cpu()
    reduce_op = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}[op]
    on_device = values.to(device)
    torch.distributed.all_reduce(on_device, op=reduce_op)
    return on_device.cpu()


def replicas_agree(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether every data-parallel worker holds the same weights (a checksum compared)."""
    with torch.no_grad():
        checksum = sum(float(p.double().sum()) for p in model.parameters())
    extremes = all_reduce(torch.tensor([checksum, -checksum], dtype=torch.float64), device, "max")
    return float(extremes[0]) == -float(extremes[1])


def training_batches(
    data: PlaneSlices,
    config: TrainConfig,
    steps: int,
    rng: np.random.Generator,
    augment_rng: np.random.Generator,
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """An epoch's batches: sampled with lesion oversampling, augmented when ``config.augment``."""
    batches = data.sample_batches(
        rng, batch_size=config.batch_size, steps=steps, lesion_oversample=config.lesion_oversample
    )
    return augment_batches(batches, augment_rng) if config.augment else batches


def train_one_epoch(
    model: torch.nn.Module,
    encoder: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    device: torch.device,
    *,
    encoder_frozen: bool,
) -> tuple[float, int]:
    """Train over ``batches``; return (mean loss, steps).

    A frozen encoder stays in eval mode so its batch-norm statistics are kept.
    """
    model.train()
    if encoder_frozen:
        encoder.eval()
    total, steps = 0.0, 0
    for images, targets in batches:
        images, targets = images.to(device), targets.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), targets)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        steps += 1
    return total / max(steps, 1), steps


@dataclass(frozen=True)
class Evaluation:
    """Validation over every worker: mean loss, Dice pooled over the brain voxels, and the
    mean lesion-wise F1 of the validation cases (1.0 without cases)."""

    loss: float
    dice: float
    slices: int
    lesion_f1: float = 1.0
    cases: int = 0


def selection_score(evaluation: Evaluation, metric: str = "dice_lesion_f1") -> float:
    """The validation score that picks the best epoch (``TrainConfig.checkpoint_metric``).

    ``dice_lesion_f1`` (default): the mean of pooled Dice and mean lesion-wise F1, so an
    epoch that finds more lesions without losing overlap wins; ``dice`` or ``lesion_f1`` alone.
    """
    if metric == "dice":
        return evaluation.dice
    if metric == "lesion_f1":
        return evaluation.lesion_f1
    if metric == "dice_lesion_f1":
        return (evaluation.dice + evaluation.lesion_f1) / 2
    raise ValueError(f"unknown checkpoint metric {metric!r}")


def _case_lesion_f1(predicted: Mapping[int, np.ndarray], data: PlaneSlices) -> list[float]:
    """Lesion-wise F1 of each case's restacked prediction (slice stacks: 26-connectivity is
    the same whatever the axis order)."""
    return [
        float(lesion_detection(stack, data.labels[case])["lesion_f1"])
        for case, stack in sorted(predicted.items())
    ]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: PlaneSlices,
    loss_fn: torch.nn.Module,
    device: torch.device,
    batch_size: int,
) -> Evaluation:
    """Loss, pooled lesion Dice and mean lesion-wise F1 over the validation data of every worker.

    Predictions outside the brain are background, as in segmentation (which zeroes them),
    so validation Dice is the Dice of the restacked volumes that ``segment`` would write.
    Slices come in case order, so each case's predicted slices are restacked (slices without
    brain stay background) and scored lesion-wise against its label (ISLES rules,
    :func:`stroke_ray.metrics.lesion_detection`). A worker without validation slices
    contributes zeros. Give it the bare model, not its DDP wrapper: DDP's forward is a collective
    (buffer sync) that a worker with fewer validation batches would never join.
    """
    model.eval()
    sums = torch.zeros(7, dtype=torch.float64)  # loss*n, n, tp, fp, fn, sum of lesion F1, cases
    predicted_stacks: dict[int, np.ndarray] = {}
    start = 0
    for images, targets, brain in data.in_order(batch_size):
        images, targets, brain = images.to(device), targets.to(device), brain.to(device)
        logits = model(images)
        predicted = (logits.argmax(dim=1) == 1) & brain
        lesion = targets == 1
        sums[:5] += torch.tensor(
            [
                float(loss_fn(logits, targets)) * len(images),
                len(images),
                float((predicted & lesion).sum()),
                float((predicted & ~lesion).sum()),
                float((~predicted & lesion).sum()),
            ],
            dtype=torch.float64,
        )
        on_cpu = predicted.cpu().numpy()
        for row, (case, number) in enumerate(data.index[start : start + len(images)]):
            stack = predicted_stacks.get(int(case))
            if stack is None:
                stack = predicted_stacks[int(case)] = np.zeros(data.labels[case].shape, bool)
            height, width = stack.shape[-2:]
            stack[number] = on_cpu[row, :height, :width]
        start += len(images)
    f1s = _case_lesion_f1(predicted_stacks, data)
    sums[5:] = torch.tensor([sum(f1s), len(f1s)], dtype=torch.float64)
    loss_sum, count, tp, fp, fn, f1_sum, cases = all_reduce(sums, device).tolist()
    dice = ratios_from_counts(int(tp), int(fp), int(fn), 0)["dice"]
    return Evaluation(
        loss=loss_sum / max(count, 1.0),
        dice=dice,
        slices=int(count),
        lesion_f1=f1_sum / cases if cases else 1.0,
        cases=int(cases),
    )


def to_cpu(value: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every tensor detached on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, Mapping):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(item) for item in value)
    return value


def checkpoint_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int,
    best_model: Mapping[str, torch.Tensor],
    best_dice: float,
    history: list[dict[str, Any]],
    best_score: float | None = None,
) -> dict[str, Any]:
    """Everything a restart needs, as CPU tensors and plain values (``weights_only`` safe)."""
    keys = list(history[0]) if history else []
    return to_cpu(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "best_model": dict(best_model),
            "best_dice": best_dice,
            "best_score": best_dice if best_score is None else best_score,
            "history_keys": keys,
            "history": [[row[k] for k in keys] for row in history],
        }
    )


def checkpoint_bytes(state: Mapping[str, Any]) -> bytes:
    """Serialise a checkpoint state."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def load_checkpoint_state(data: bytes) -> dict[str, Any]:
    """Read a checkpoint state onto the CPU (tensors only), history rebuilt as dicts."""
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    state["history"] = [
        dict(zip(state["history_keys"], row, strict=True)) for row in state["history"]
    ]
    return state


@dataclass
class Progress:
    """Where a plane's training stands."""

    next_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_model: dict[str, torch.Tensor] = field(default_factory=dict)
    best_dice: float = -1.0  # validation Dice of the kept epoch
    best_score: float = -1.0  # its selection score (:func:`selection_score`)

    def record(
        self,
        model: torch.nn.Module,
        metrics: dict[str, Any],
        dice: float,
        score: float | None = None,
    ) -> None:
        """Append an epoch's metrics; keep the weights when the validation score (default:
        the Dice) improved on every earlier epoch's (the earliest epoch wins a tie)."""
        self.history.append(metrics)
        score = dice if score is None else score
        if score > self.best_score:
            self.best_score, self.best_dice = score, dice
            self.best_model = to_cpu(model.state_dict())
        self.next_epoch = int(metrics["epoch"]) + 1


def restore_training(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any] | None,
) -> Progress:
    """Load a checkpoint state into a model already on its device, then into its optimizer.

    ``Optimizer.load_state_dict`` casts the moments to the device of their parameters, so
    the model must be on its device first (else Adam's state stays on the CPU).
    """
    if state is None:
        return Progress()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return Progress(
        next_epoch=int(state["epoch"]) + 1,
        history=list(state["history"]),
        best_model=dict(state["best_model"]),
        best_dice=float(state["best_dice"]),
        best_score=float(state.get("best_score", state["best_dice"])),
    )


def epoch_metrics(
    plane: str,
    epoch: int,
    current: Phase,
    train_loss: float,
    steps: int,
    validation: Evaluation,
    train_slices: int,
    started: float,
    replicas_in_sync: bool = True,
    score: float | None = None,
) -> dict[str, Any]:
    """One history row (``val_score``: the selection score, default the Dice)."""
    return {
        "plane": plane,
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": validation.loss,
        "val_dice": validation.dice,
        "val_lesion_f1": validation.lesion_f1,
        "val_score": validation.dice if score is None else score,
        "val_cases": validation.cases,
        "lr": current.lr,
        "encoder_frozen": current.encoder_frozen,
        "steps": steps,
        "train_slices": train_slices,
        "val_slices": validation.slices,
        "replicas_in_sync": replicas_in_sync,
        "seconds": time.perf_counter() - started,
    }
