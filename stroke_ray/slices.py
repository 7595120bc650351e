"""Training slices of one plane: which slices are used, how they are sampled and batched.

Slices without brain are skipped. Slices that contain lesion are drawn ``lesion_oversample``
times as often as the others (sampling with replacement), so that a batch sees lesions
although they cover ~1 % of brain slices' voxels. Cases in one batch may have different
brain boxes: the batch is zero-padded to its largest slice (all sizes are multiples of 32).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stroke_ray.config import TrainConfig
from stroke_ray.planes import brain_slice_indices, volume_to_slices
from stroke_ray.preprocess import Prepared

__all__ = ["PlaneSlices", "collate"]


@dataclass
class PlaneSlices:
    """The brain slices of several cases along one plane."""

    images: list[np.ndarray]  # per case: (N, 4, H, W) view
    labels: list[np.ndarray]  # per case: (N, H, W) view
    brains: list[np.ndarray]  # per case: (N, H, W) bool view
    index: np.ndarray  # (S, 2): case number, slice number of each usable slice
    has_lesion: np.ndarray  # (S,) bool

    @classmethod
    def from_cases(cls, cases: Sequence[Prepared], plane: str) -> PlaneSlices:
        """Collect the brain slices of ``plane`` from labelled prepared cases."""
        images, labels, brains, index, lesion = [], [], [], [], []
        for number, case in enumerate(cases):
            if case.label is None:
                raise ValueError(f"case {case.case_id}: training needs a label")
            case_images = volume_to_slices(case.image, plane)
            case_labels = volume_to_slices(case.label, plane)
            usable = brain_slice_indices(case.brain, plane)
            images.append(case_images)
            labels.append(case_labels)
            brains.append(volume_to_slices(case.brain, plane))
            index.extend((number, int(s)) for s in usable)
            lesion.extend(bool(case_labels[s].any()) for s in usable)
        return cls(
            images=images,
            labels=labels,
            brains=brains,
            index=np.asarray(index, dtype=np.int64).reshape(-1, 2),
            has_lesion=np.asarray(lesion, dtype=bool),
        )

    def __len__(self) -> int:
        return len(self.index)

    def sample_batches(
        self,
        rng: np.random.Generator,
        *,
        batch_size: int,
        steps: int,
        lesion_oversample: float = TrainConfig.lesion_oversample,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``steps`` random batches drawn with replacement, lesion slices over-sampled."""
        weights = np.where(self.has_lesion, lesion_oversample, 1.0)
        probabilities = weights / weights.sum()
        for _ in range(steps):
            chosen = rng.choice(len(self.index), size=batch_size, p=probabilities)
            yield self.batch(chosen)

    def in_order(
        self, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Every slice once, in order, with its brain mask (validation)."""
        for start in range(0, len(self.index), batch_size):
            rows = np.arange(start, min(start + batch_size, len(self.index)))
            images, targets = self.batch(rows)
            brains = _pad_stack([self.brains[case][s] for case, s in self.index[rows]], bool)
            yield images, targets, torch.from_numpy(brains)

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 4, H, W) float32 and targets (B, H, W) int64 for the given rows."""
        pairs = [(self.images[case][s], self.labels[case][s]) for case, s in self.index[rows]]
        return collate(pairs)


def _pad_stack(arrays: Sequence[np.ndarray], dtype) -> np.ndarray:
    """Stack (..., H, W) arrays, zero-padding each to the largest height and width."""
    height = max(array.shape[-2] for array in arrays)
    width = max(array.shape[-1] for array in arrays)
    out = np.zeros((len(arrays), *arrays[0].shape[:-2], height, width), dtype=dtype)
    for row, array in enumerate(arrays):
        out[row, ..., : array.shape[-2], : array.shape[-1]] = array
    return out


def collate(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (image, label) slice pairs, zero-padding to the largest height and width."""
    images = _pad_stack([image for image, _ in pairs], np.float32)
    labels = _pad_stack([label for _, label in pairs], np.int64)
    return torch.from_numpy(images), torch.from_numpy(labels)
