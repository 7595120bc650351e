"""Run one plane model over a case's brain slices, and restack its slices into a volume.

On a GPU the forward pass runs in channels-last memory layout under bf16 autocast; on a
CPU it is plain fp32 unless ``precision="bf16"`` is asked for (faster on CPUs with
AVX-512 BF16, slightly different probabilities). Test-time augmentation averages the
prediction of the slice with those of its two in-plane flips.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from stroke_ray.planes import brain_slice_indices, slices_to_volume, volume_to_slices

__all__ = ["PlanePrediction", "predict_plane", "restack", "autocast_dtype"]

PlanePrediction = tuple[np.ndarray, np.ndarray]  # (slice indices, probabilities (N, H, W))


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for a device and precision setting (None = fp32)."""
    if precision == "fp32" or (precision == "auto" and device.type == "cpu"):
        return None
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16


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


def restack(
    prediction: PlanePrediction, grid_shape: tuple[int, int, int], plane: str
) -> np.ndarray:
    """Put a plane's slice probabilities back into a volume in slice order (0 elsewhere)."""
    indices, probabilities = prediction
    slices = np.zeros(volume_to_slices(np.empty(grid_shape, dtype=bool), plane).shape, np.float32)
    slices[indices] = probabilities
    return slices_to_volume(slices, plane)
