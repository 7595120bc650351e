"""Run one plane model over a case's brain slices, and restack its slices into a volume.

On a GPU the forward pass runs in channels-last memory layout under bf16 autocast. On a CPU,
``precision="auto"`` is bf16 autocast only where bf16 is native (AVX-512 BF16 or AMX BF16,
:func:`stroke_ray.machine.native_bf16`), else fp32: emulated bf16 is ~40× slower than fp32.
An explicit ``"bf16"`` on such a CPU is honoured with a warning. Test-time augmentation
averages the prediction of the slice with those of its two in-plane flips.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Mapping

import numpy as np
import torch

from stroke_ray.machine import EMULATED_BF16_SLOWDOWN, native_bf16
from stroke_ray.planes import brain_slice_indices, slices_to_volume, volume_to_slices

__all__ = [
    "PlanePrediction",
    "predict_plane",
    "predict_planes",
    "restack",
    "autocast_dtype",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

PlanePrediction = tuple[np.ndarray, np.ndarray]  # (slice indices, probabilities (N, H, W))


@functools.cache
def _warn_emulated_bf16(device_type: str) -> None:
    logger.warning(
        "precision bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16 flag): PyTorch "
        "emulates it, measured ~%d× slower than fp32 (0.24 vs 9.4 slices/s, ResNet50 U-Net, "
        "2-core AVX2 CPU); use --precision auto or fp32",
        EMULATED_BF16_SLOWDOWN,
    )


def resolve_precision(precision: str, device_type: str) -> str:
    """What a precision setting means on a device: ``fp32``, ``bf16`` or ``fp16``.

    ``auto`` is bf16 where bf16 is native (a GPU, or a CPU with AVX-512/AMX BF16), else fp32;
    an explicit bf16 on a CPU without it is kept but warned about (once per process).
    """
    if precision == "auto":
        return "bf16" if native_bf16(device_type) else "fp32"
    if precision == "bf16" and not native_bf16(device_type):
        _warn_emulated_bf16(device_type)
    return precision


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for a device and precision setting (None = fp32)."""
    resolved = resolve_precision(precision, device.type)
    if resolved == "fp32":
        return None
    return torch.float16 if resolved == "fp16" else torch.bfloat16


def _lesion_probability(model: torch.nn.Module, batch: torch.Tensor, tta: bool) -> torch.Tensor:
    probability = torch.softmax(model(batch).float(), dim=1)[:, 1]
    if not tta:
        return probability
    for dims in ((-1,), (-2,)):
        flipped = torch.softmax(model(batch.flip(dims)).float(), dim=1)[:, 1]
        probability = probability + flipped.flip(dims)
    return probability / 3


@torch.inference_mode()
def predict_plane(
    model: torch.nn.Module,
    image: np.ndarray,
    brain: np.ndarray,
    plane: str,
    *,
    batch_size: int = 16,
    device: torch.device | None = None,
    precision: str = "auto",
    tta: bool = False,
) -> PlanePrediction:
    """Lesion probabilities of the plane's brain slices (float32), with their indices.

    float32 all the way to the vote: rounding to float16 first would turn 0.49995 into 0.5.
    """
    device = device or next(model.parameters()).device
    dtype = autocast_dtype(device, precision)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    slices = volume_to_slices(image, plane)
    indices = brain_slice_indices(brain, plane)
    outputs = []
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with autocast:
        for start in range(0, len(indices), batch_size):
            chosen = indices[start : start + batch_size]
            batch = torch.from_numpy(np.ascontiguousarray(slices[chosen])).to(device)
            batch = batch.contiguous(memory_format=memory_format)
            outputs.append(_lesion_probability(model, batch, tta).cpu().numpy())
    height, width = slices.shape[-2:]
    probabilities = (
        np.concatenate(outputs) if outputs else np.zeros((0, height, width), dtype=np.float32)
    )
    brain_slices = volume_to_slices(brain, plane)[indices]
    return indices, (probabilities * brain_slices).astype(np.float32, copy=False)


def predict_planes(
    models: Mapping[str, torch.nn.Module], image: np.ndarray, brain: np.ndarray, **settings
) -> dict[str, PlanePrediction]:
    """Each plane model's brain-slice probabilities of one prepared case
    (``settings``: those of :func:`predict_plane`)."""
    return {
        plane: predict_plane(model, image, brain, plane, **settings)
        for plane, model in models.items()
    }


def restack(
    prediction: PlanePrediction, grid_shape: tuple[int, int, int], plane: str
) -> np.ndarray:
    """Put a plane's slice probabilities back into a volume in slice order (0 elsewhere)."""
    indices, probabilities = prediction
    slices = np.zeros(volume_to_slices(np.empty(grid_shape, dtype=bool), plane).shape, np.float32)
    slices[indices] = probabilities
    return slices_to_volume(slices, plane)
