"""Tests for stroke_ray.train_loop, the per-worker training pieces, without Ray: the phase rule,
one epoch, validation inside the brain, the checkpoint state and the GPU placement rules."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL_CONFIG, free_port

from stroke_ray.config import TrainConfig
from stroke_ray.losses import HybridLoss
from stroke_ray.model import build_model
from stroke_ray.preprocess import Prepared
from stroke_ray.slices import PlaneSlices
from stroke_ray.train_loop import (
    Evaluation,
    Phase,
    Progress,
    all_reduce,
    apply_phase,
    checkpoint_bytes,
    checkpoint_state,
    epoch_metrics,
    evaluate,
    load_checkpoint_state,
    phase,
    restore_training,
    train_one_epoch,
)

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _config(**overrides) -> TrainConfig:
    return TrainConfig(cohort="c", out="o", **overrides)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(TINY_MODEL_CONFIG, "none")


def _case(case_id: str, shape: tuple[int, int, int], seed: int = 0) -> Prepared:
    """A prepared case: a brain box clear of the borders with a lesion box inside it."""
    brain = np.zeros(shape, dtype=bool)
    brain[4:-4, 6:-6, :] = True
    label = np.zeros(shape, dtype=np.uint8)
    label[10:16, 10:16, 1:3] = 1
    image = np.random.default_rng(seed).normal(size=(4, *shape)).astype(np.float32) * brain
    return Prepared(case_id=case_id, image=image, label=label, brain=brain, geometry=None)


def _slices(*cases: Prepared, plane: str = "axial") -> PlaneSlices:
    return PlaneSlices.from_cases(list(cases), plane)


class LesionEverywhere(torch.nn.Module):
    """Predicts lesion at every pixel, padding included."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([0.0, 4.0]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        return self.bias.view(1, 2, 1, 1).expand(batch, 2, height, width)


# --------------------------------------------------------------------------- phases


def test_phase_from_scratch_trains_everything_at_lr():
    config = _config(
        weights="none", freeze_epochs=3, lr=1e-3, finetune_lr=1e-5, lr_schedule="constant"
    )
    assert [phase(epoch, config) for epoch in range(5)] == [Phase(False, 1e-3)] * 5


def test_phase_pretrained_freezes_then_fine_tunes():
    config = _config(
        weights="imagenet", freeze_epochs=2, lr=1e-3, finetune_lr=1e-5, lr_schedule="constant"
    )
    assert [phase(epoch, config) for epoch in range(4)] == [
        Phase(encoder_frozen=True, lr=1e-3),
        Phase(encoder_frozen=True, lr=1e-3),
        Phase(encoder_frozen=False, lr=1e-5),
        Phase(encoder_frozen=False, lr=1e-5),
    ]


def test_phase_pretrained_without_freezing_fine_tunes_from_the_start():
    config = _config(
        weights="/weights/encoder.pt",
        freeze_epochs=0,
        lr=1e-3,
        finetune_lr=1e-5,
        lr_schedule="constant",
    )
    assert [phase(epoch, config) for epoch in range(3)] == [Phase(False, 1e-5)] * 3


def test_apply_phase_freezes_the_encoder_and_sets_the_rate():
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    apply_phase(model, optimizer, Phase(encoder_frozen=True, lr=0.25))
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert [group["lr"] for group in optimizer.param_groups] == [0.25]
    apply_phase(model, optimizer, Phase(encoder_frozen=False, lr=0.5))
    assert all(p.requires_grad for p in model.parameters())
    assert [group["lr"] for group in optimizer.param_groups] == [0.5]


# --------------------------------------------------------------------------- one epoch


def _bn_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: value.clone()
        for name, value in module.named_buffers()
        if "running_" in name or "num_batches" in name
    }


class RecordingLoss(HybridLoss):
    """The hybrid loss, remembering every value it returned."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[float] = []

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = super().forward(logits, target)
        self.values.append(float(loss.detach()))
        return loss


def _epoch(frozen: bool) -> tuple[torch.nn.Module, dict, dict, tuple[float, int], list[float]]:
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    apply_phase(model, optimizer, Phase(encoder_frozen=frozen, lr=1e-2))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    buffers = _bn_buffers(model.encoder)
    data = _slices(_case("a", (32, 32, 4)), _case("b", (32, 32, 4), seed=1))
    batches = data.sample_batches(np.random.default_rng(0), batch_size=2, steps=3)
    loss_fn = RecordingLoss()
    result = train_one_epoch(
        model, model.encoder, batches, optimizer, loss_fn, CPU, encoder_frozen=frozen
    )
    return model, before, buffers, result, loss_fn.values


def test_train_one_epoch_with_a_frozen_encoder():
    model, before, buffers, (loss, steps), losses = _epoch(frozen=True)
    assert steps == 3 and len(losses) == 3
    assert loss == pytest.approx(sum(losses) / 3) and math.isfinite(loss) and loss > 0
    changed = {
        name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])
    }
    assert any(name.startswith("decoder.") for name in changed)
    assert not any(name.startswith("encoder.") for name in changed)
    for name, value in _bn_buffers(model.encoder).items():
        assert torch.equal(value, buffers[name]), f"encoder batch-norm {name} changed"
    assert model.training and not model.encoder.training


def test_train_one_epoch_with_a_trainable_encoder_updates_its_statistics():
    """The control of the test above: an unfrozen encoder's batch-norm statistics move."""
    model, before, buffers, (_, steps), _ = _epoch(frozen=False)
    assert steps == 3 and model.encoder.training
    moved = [
        name
        for name, value in _bn_buffers(model.encoder).items()
        if not torch.equal(value, buffers[name])
    ]
    assert any("running_mean" in name for name in moved)
    assert not torch.equal(model.encoder.conv1.weight.detach(), before["encoder.conv1.weight"])


# --------------------------------------------------------------------------- validation


def test_evaluate_counts_only_the_brain():
    """A model that says lesion everywhere: padding and the rest of the grid are not its fault."""
    small, large = _case("a", (32, 32, 4)), _case("b", (64, 32, 3), seed=1)
    data = _slices(small, large)
    loss_fn = HybridLoss()
    evaluation = evaluate(LesionEverywhere(), data, loss_fn, CPU, batch_size=3)

    lesion = int(small.label.sum() + large.label.sum())
    brain = int(small.brain.sum() + large.brain.sum())
    fp = brain - lesion
    assert evaluation.slices == 4 + 3
    assert evaluation.dice == pytest.approx(2 * lesion / (2 * lesion + fp))
    assert math.isfinite(evaluation.loss) and evaluation.loss > 0
    # everything in the (padded) slices would be a much lower Dice
    padded = 7 * 64 * 32
    assert evaluation.dice > 2 * lesion / (2 * lesion + padded - lesion) + 0.01


def test_evaluate_loss_is_the_loss_over_every_slice():
    data = _slices(_case("a", (32, 32, 4)))
    model = _model().eval()
    loss_fn = HybridLoss()
    evaluation = evaluate(model, data, loss_fn, CPU, batch_size=16)
    images, targets = data.batch(np.arange(len(data)))
    with torch.no_grad():
        expected = float(loss_fn(model(images), targets))
    assert evaluation.loss == pytest.approx(expected, rel=1e-5)
    assert 0.0 <= evaluation.dice <= 1.0


def test_evaluate_without_slices_contributes_zeros():
    evaluation = evaluate(LesionEverywhere(), _slices(), HybridLoss(), CPU, batch_size=4)
    assert evaluation == Evaluation(loss=0.0, dice=1.0, slices=0)


# --------------------------------------------------------------------------- checkpoints


def _small(seed: int = 0) -> torch.nn.Module:
    """A small segmentation network (convolutions and batch norm): checkpoints stay light."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 2, 1),
    )


def _trained_pair() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A network and its Adam optimizer after one step (so Adam has moments)."""
    model = _small()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, targets = _slices(_case("a", (32, 32, 4))).batch(np.arange(2))
    HybridLoss()(model(images), targets).backward()
    optimizer.step()
    return model, optimizer


def _history() -> list[dict]:
    return [
        {"plane": "axial", "epoch": 0, "val_dice": 0.25, "encoder_frozen": True, "steps": 3},
        {"plane": "axial", "epoch": 1, "val_dice": 0.5, "encoder_frozen": False, "steps": 3},
    ]


def _state(model, optimizer) -> dict:
    return checkpoint_state(
        model, optimizer, epoch=1, best_model=model.state_dict(), best_dice=0.5, history=_history()
    )


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    return []


def test_checkpoint_state_holds_detached_cpu_copies():
    model, optimizer = _trained_pair()
    state = _state(model, optimizer)
    tensors = _tensors(state)
    assert len(tensors) > 2 * len(model.state_dict())  # model, best model, Adam moments
    assert all(t.device.type == "cpu" and not t.requires_grad for t in tensors)
    assert state["optimizer"]["state"][0]["exp_avg"].device.type == "cpu"
    shared = {p.data_ptr() for p in model.parameters()}
    assert not any(t.data_ptr() in shared for t in tensors)  # copies, not views
    saved = state["model"]["0.weight"].clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert torch.equal(state["model"]["0.weight"], saved)


def test_checkpoint_round_trip():
    model, optimizer = _trained_pair()
    loaded = load_checkpoint_state(checkpoint_bytes(_state(model, optimizer)))
    assert loaded["epoch"] == 1 and loaded["best_dice"] == 0.5
    assert loaded["history"] == _history()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded["model"][key], value), key
        assert torch.equal(loaded["best_model"][key], value), key
    saved = optimizer.state_dict()["state"]
    for index, moments in saved.items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(loaded["optimizer"]["state"][index][name], moments[name])


def test_load_checkpoint_state_reads_onto_the_cpu_with_tensors_only(monkeypatch):
    model, optimizer = _trained_pair()
    data = checkpoint_bytes(_state(model, optimizer))
    calls: list[dict] = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    load_checkpoint_state(data)
    assert len(calls) == 1
    assert calls[0]["map_location"] == "cpu"
    assert calls[0]["weights_only"] is True


@pytest.mark.filterwarnings("ignore:.*meta parameter")
def test_restore_training_puts_adam_state_beside_the_parameters():
    """The model is on its device (here "meta") before the optimizer state is loaded."""
    model, optimizer = _trained_pair()
    state = load_checkpoint_state(checkpoint_bytes(_state(model, optimizer)))

    target = _small(seed=1).to("meta")
    target_optimizer = torch.optim.Adam(target.parameters(), lr=1e-3)
    progress = restore_training(target, target_optimizer, state)

    moments = list(target_optimizer.state.values())
    assert len(moments) == len(list(target.parameters()))
    assert all(m["exp_avg"].device.type == "meta" for m in moments)
    assert all(m["exp_avg_sq"].device.type == "meta" for m in moments)
    assert progress.next_epoch == 2 and progress.best_dice == 0.5
    assert progress.history == _history()

    # the wrong order (state loaded, then the model moved) leaves Adam's moments behind
    wrong = _small(seed=1)
    wrong_optimizer = torch.optim.Adam(wrong.parameters(), lr=1e-3)
    restore_training(wrong, wrong_optimizer, state)
    wrong.to("meta")
    assert all(m["exp_avg"].device.type == "cpu" for m in wrong_optimizer.state.values())


def test_restore_training_without_a_checkpoint_starts_afresh():
    model = _model()
    optimizer = torch.optim.Adam(model.parameters())
    progress = restore_training(model, optimizer, None)
    assert progress == Progress()
    assert progress.next_epoch == 0 and progress.best_dice == -1.0


def test_progress_keeps_the_best_weights():
    model = _model()
    progress = Progress()
    progress.record(model, {"epoch": 0}, dice=0.3)
    best = {k: v.clone() for k, v in progress.best_model.items()}
    with torch.no_grad():
        model.encoder.conv1.weight.add_(1.0)
    progress.record(model, {"epoch": 1}, dice=0.2)  # worse: the best weights stay
    assert progress.next_epoch == 2 and progress.best_dice == 0.3
    assert torch.equal(progress.best_model["encoder.conv1.weight"], best["encoder.conv1.weight"])
    progress.record(model, {"epoch": 2}, dice=0.4)
    assert progress.best_dice == 0.4 and progress.next_epoch == 3
    assert torch.equal(progress.best_model["encoder.conv1.weight"], model.encoder.conv1.weight)
    assert [row["epoch"] for row in progress.history] == [0, 1, 2]


def test_epoch_metrics_row():
    row = epoch_metrics(
        "coronal", 4, Phase(True, 1e-3), 0.7, 5, Evaluation(0.6, 0.4, 12), 30, started=0.0
    )
    assert row["plane"] == "coronal" and row["epoch"] == 4
    assert (row["train_loss"], row["val_loss"], row["val_dice"]) == (0.7, 0.6, 0.4)
    assert (row["lr"], row["encoder_frozen"], row["steps"], row["train_slices"]) == (
        1e-3,
        True,
        5,
        30,
    )
    assert row["seconds"] > 0


# --------------------------------------------------------------------------- collectives


def test_all_reduce_without_a_process_group_returns_the_values(monkeypatch):
    assert not torch.distributed.is_initialized()

    def no_collective(*args, **kwargs):
        raise AssertionError("no process group: nothing to reduce")

    monkeypatch.setattr(torch.distributed, "all_reduce", no_collective)
    values = torch.tensor([1.0, 2.0])
    assert torch.equal(all_reduce(values, CPU), values)


@pytest.fixture
def gloo_group():
    """A single-process gloo process group, destroyed afterwards."""
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{free_port()}",
        rank=0,
        world_size=1,
        timeout=timedelta(seconds=60),
    )
    yield
    torch.distributed.destroy_process_group()


def _spy(monkeypatch, calls: list, *, forward: bool = True):
    real = torch.distributed.all_reduce

    class Stop(Exception):
        """Stops the reduction once its input has been seen."""

    def spy(tensor, op=torch.distributed.ReduceOp.SUM, *args, **kwargs):
        calls.append((tensor.device, op))
        if not forward:
            raise Stop
        return real(tensor, op, *args, **kwargs)

    monkeypatch.setattr(torch.distributed, "all_reduce", spy)
    return Stop


def test_all_reduce_sums_and_maxes_in_the_group(gloo_group, monkeypatch):
    calls: list = []
    _spy(monkeypatch, calls)
    values = torch.tensor([3.0, 4.0], dtype=torch.float64)
    summed = all_reduce(values, CPU)
    largest = all_reduce(torch.tensor([7]), CPU, op="max")
    assert torch.equal(summed, values) and summed.device.type == "cpu"
    assert largest.tolist() == [7]
    assert [op for _, op in calls] == [
        torch.distributed.ReduceOp.SUM,
        torch.distributed.ReduceOp.MAX,
    ]


def test_all_reduce_reduces_on_the_given_device(gloo_group, monkeypatch):
    """NCCL has no CPU tensors: the collective must see the tensor on the worker's device."""
    calls: list = []
    stop = _spy(monkeypatch, calls, forward=False)
    with pytest.raises(stop):
        all_reduce(torch.tensor([1.0]), torch.device("meta"))
    assert [device.type for device, _ in calls] == ["meta"]


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@needs_cuda
def test_gpu_checkpoint_is_cpu_and_restored_state_is_on_the_gpu():
    cuda = torch.device("cuda")
    model = _model().to(cuda)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, targets = _slices(_case("a", (32, 32, 4))).batch(np.arange(2))
    HybridLoss().to(cuda)(model(images.to(cuda)), targets.to(cuda)).backward()
    optimizer.step()
    state = checkpoint_state(
        model, optimizer, epoch=0, best_model=model.state_dict(), best_dice=0.1, history=[]
    )
    assert all(t.device.type == "cpu" for t in _tensors(state))

    target = _model(seed=1).to(cuda)
    target_optimizer = torch.optim.Adam(target.parameters(), lr=1e-3)
    restore_training(target, target_optimizer, load_checkpoint_state(checkpoint_bytes(state)))
    assert all(m["exp_avg"].device.type == "cuda" for m in target_optimizer.state.values())


# --------------------------------------------------------------------------- issue 15: schedule,
# lesion-wise validation and checkpoint selection


def test_cosine_schedule_decays_each_phase_to_five_percent():
    from stroke_ray.train_loop import COSINE_FLOOR

    scratch = _config(weights="none", epochs=5, lr=1e-3, lr_schedule="cosine")
    rates = [phase(epoch, scratch).lr for epoch in range(5)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-3 * COSINE_FLOOR)
    assert rates[2] == pytest.approx(1e-3 * (1 + COSINE_FLOOR) / 2)
    assert all(a > b for a, b in zip(rates[:-1], rates[1:], strict=True))
    pretrained = _config(
        weights="imagenet", epochs=5, freeze_epochs=2, lr=1e-3, finetune_lr=1e-4,
        lr_schedule="cosine",
    )  # fmt: skip
    phases = [phase(epoch, pretrained) for epoch in range(5)]
    assert [p.encoder_frozen for p in phases] == [True, True, False, False, False]
    assert [p.lr for p in phases] == pytest.approx(
        [1e-3, 1e-3 * COSINE_FLOOR, 1e-4, 1e-4 * (1 + COSINE_FLOOR) / 2, 1e-4 * COSINE_FLOOR]
    )
    assert phase(0, _config(weights="none", epochs=1, lr_schedule="cosine")).lr == 1e-3


def test_evaluate_scores_lesions_per_restacked_case():
    """Case a: its lesion found plus a false one in another slice; case b: lesion missed."""

    class Oracle(torch.nn.Module):
        """Predicts the batch's lesion map given as the fifth channel."""

        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(8.0))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            lesion = images[:, 4] * self.scale - self.scale / 2
            return torch.stack([torch.zeros_like(lesion), lesion], dim=1)

    a, b = _case("a", (32, 32, 4)), _case("b", (32, 32, 3), seed=1)
    found_and_false = a.label.astype(np.float32)
    found_and_false[20:23, 20:23, 3] = 1  # a second, false lesion two slices away
    a.image = np.concatenate([a.image, found_and_false[None]])
    b.image = np.concatenate([b.image, np.zeros((1, 32, 32, 3), np.float32)])
    evaluation = evaluate(Oracle(), _slices(a, b), HybridLoss(), CPU, batch_size=3)
    assert evaluation.cases == 2 and evaluation.slices == 7
    assert evaluation.lesion_f1 == pytest.approx((2 / 3 + 0.0) / 2)  # a: 2·1/(2+1); b: 0
    lesion = a.label.sum()
    assert evaluation.dice == pytest.approx(2 * lesion / (2 * lesion + 9 + b.label.sum()))


def test_selection_score_combines_dice_and_lesion_f1():
    from stroke_ray.train_loop import selection_score

    evaluation = Evaluation(loss=0.1, dice=0.6, slices=5, lesion_f1=0.2, cases=2)
    assert selection_score(evaluation) == pytest.approx(0.4)
    assert selection_score(evaluation, "dice") == 0.6
    assert selection_score(evaluation, "lesion_f1") == 0.2
    with pytest.raises(ValueError):
        selection_score(evaluation, "loss")
    assert TrainConfig.checkpoint_metric == "dice_lesion_f1"


def test_progress_keeps_the_best_score_not_the_best_dice():
    model = _model()
    progress = Progress()
    progress.record(model, {"epoch": 0}, dice=0.6, score=0.4)
    progress.record(model, {"epoch": 1}, dice=0.7, score=0.35)  # more Dice, fewer lesions
    assert (progress.best_dice, progress.best_score) == (0.6, 0.4)
    progress.record(model, {"epoch": 2}, dice=0.5, score=0.45)
    assert (progress.best_dice, progress.best_score) == (0.5, 0.45)
    optimizer = torch.optim.Adam(model.parameters())
    state = checkpoint_state(
        model, optimizer, epoch=2, best_model=progress.best_model, best_dice=progress.best_dice,
        history=[], best_score=progress.best_score,
    )  # fmt: skip
    restored = restore_training(model, optimizer, load_checkpoint_state(checkpoint_bytes(state)))
    assert (restored.best_dice, restored.best_score) == (0.5, 0.45)
    old = checkpoint_state(model, optimizer, epoch=0, best_model={}, best_dice=0.3, history=[])
    del old["best_score"]  # a checkpoint written before the score existed
    assert restore_training(model, optimizer, old).best_score == 0.3


def test_epoch_metrics_row_records_lesion_f1_and_score():
    row = epoch_metrics(
        "axial", 0, Phase(False, 1e-3), 0.7, 5, Evaluation(0.6, 0.4, 12, 0.8, 3), 30,
        started=0.0, score=0.6,
    )  # fmt: skip
    assert (row["val_dice"], row["val_lesion_f1"], row["val_score"]) == (0.4, 0.8, 0.6)
    assert row["val_cases"] == 3
