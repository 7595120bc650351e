"""The run folder: where a training run keeps its models, split, history and summary.

```
RUN_DIR/
  run.json            config, package versions, split, voxel size (spacing_mm), skipped cases,
                      per-plane results, fused validation and the suggested minimum lesion size
  history.parquet     one row per plane and epoch (train/val loss, val Dice, lr, ...)
  models/<plane>.pt   best-validation-Dice weights of each plane (state dict only)
  ray/<plane>/        Ray Train storage: checkpoints that let a run resume
```
Local paths and fsspec URIs alike; every file is written atomically.
"""

from __future__ import annotations

import io
import platform
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from stroke_ray.config import ModelConfig, TrainConfig, public_dict
from stroke_ray.io import (
    StorageOptions,
    exists,
    join_uri,
    read_json,
    read_parquet,
    write_bytes_atomic,
)
from stroke_ray.model import build_model, load_weights
from stroke_ray.volumes import Inputs

__all__ = [
    "load_plane_models",
    "RunNotReadyError",
    "finished_run",
    "model_uri",
    "history_uri",
    "run_json_uri",
    "ray_storage_uri",
    "save_plane_model",
    "plane_model_exists",
    "load_plane_model",
    "package_versions",
    "previous_run",
    "run_definition",
    "run_inputs",
    "DEFINING_OPTIONS",
]

# The options that shape a run's models: a rerun into the same folder must ask for the same.
DEFINING_OPTIONS: tuple[str, ...] = (
    "model", "sequences", "reference", "resample", "weights", "epochs", "freeze_epochs", "lr",
    "finetune_lr", "batch_size", "alpha", "beta", "lesion_weight", "lesion_oversample",
    "val_fraction", "seed", "max_steps_per_epoch", "workers_per_plane", "lr_schedule", "spacing",
    "augment", "checkpoint_metric",
)  # fmt: skip


class RunNotReadyError(ValueError):
    """A run folder cannot be used for segmentation (missing, unfinished or incomplete)."""


def finished_run(run_dir: str, storage_options: StorageOptions = None) -> dict[str, Any]:
    """run.json of a finished run whose plane weights all exist, else RunNotReadyError."""
    try:
        run = read_json(run_json_uri(run_dir), storage_options)
    except Exception as err:  # noqa: BLE001 - missing or unreadable: same answer
        raise RunNotReadyError(
            f"{run_dir}: no readable run.json, not a training run ({err})"
        ) from err
    if run.get("status") != "finished":
        raise RunNotReadyError(
            f"{run_dir}: training has not finished (status {run.get('status')!r}); rerun "
            "`stroke-ray train` with the same --out to resume it"
        )
    missing = [
        p for p in run.get("planes", {}) if not plane_model_exists(run_dir, p, storage_options)
    ]
    if missing or not run.get("planes"):
        raise RunNotReadyError(f"{run_dir}: weights missing for planes {missing or 'all'}")
    return run


def run_json_uri(run_dir: str) -> str:
    """run.json of a run."""
    return join_uri(run_dir, "run.json")


def history_uri(run_dir: str) -> str:
    """history.parquet of a run."""
    return join_uri(run_dir, "history.parquet")


def model_uri(run_dir: str, plane: str) -> str:
    """The final weights of one plane."""
    return join_uri(run_dir, "models", f"{plane}.pt")


def ray_storage_uri(run_dir: str) -> str:
    """Ray Train's storage folder inside the run."""
    return join_uri(run_dir, "ray")


def save_plane_model(
    state_dict: Mapping[str, torch.Tensor],
    run_dir: str,
    plane: str,
    storage_options: StorageOptions = None,
) -> str:
    """Write a plane's final weights (tensors only, loadable with weights_only=True)."""
    buffer = io.BytesIO()
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}}, buffer)
    uri = model_uri(run_dir, plane)
    write_bytes_atomic(buffer.getvalue(), uri, storage_options)
    return uri


def plane_model_exists(run_dir: str, plane: str, storage_options: StorageOptions = None) -> bool:
    """Whether a plane's final weights are already in the run folder."""
    return exists(model_uri(run_dir, plane), storage_options)


def load_plane_model(
    run_dir: str, plane: str, storage_options: StorageOptions = None
) -> torch.nn.Module:
    """Rebuild a trained plane model from run.json and its weights file (eval mode)."""
    run = read_json(run_json_uri(run_dir), storage_options)
    return load_model_of(run, run_dir, plane, storage_options)


def load_model_of(
    run: Mapping[str, Any], run_dir: str, plane: str, storage_options: StorageOptions = None
) -> torch.nn.Module:
    """A trained plane model of a run whose run.json is already read (eval mode).

    The model is built on the ``meta`` device and takes the file's tensors as they are: no
    random initialisation of ~30M parameters that the weights replace anyway.
    """
    config = ModelConfig.from_dict(run["model"])
    with torch.device("meta"):
        model = build_model(config, "none")
    load_weights(model, model_uri(run_dir, plane), storage_options, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # not all in the file
        model = build_model(config, "none")
        load_weights(model, model_uri(run_dir, plane), storage_options)
    return model.eval()


def load_plane_models(
    run: Mapping[str, Any],
    run_dir: str,
    device: torch.device,
    storage_options: StorageOptions = None,
) -> dict[str, torch.nn.Module]:
    """Every plane model of a run on ``device`` (channels-last memory layout on a GPU)."""
    memory_format = torch.channels_last if device.type == "cuda" else torch.preserve_format
    return {
        plane: load_model_of(run, run_dir, plane, storage_options).to(
            device, memory_format=memory_format
        )
        for plane in run["planes"]
    }


def run_definition(config: TrainConfig, split: Mapping[str, list[str]] | None) -> dict[str, Any]:
    """What defines a run: the options that shape its models and its case split (left out
    while it is not known)."""
    options = public_dict(config)
    definition = {name: options[name] for name in DEFINING_OPTIONS}
    return definition if split is None else {**definition, "split": dict(split)}


def run_inputs(run: Mapping[str, Any]) -> Inputs:
    """The sequences, reference and resampling a run's models were trained with."""
    return Inputs.of(run.get("config") or {})


def previous_run(
    run_dir: str, storage_options: StorageOptions = None
) -> tuple[dict[str, Any] | None, pd.DataFrame]:
    """run.json and history of an existing run folder; (None, empty) where there is none.

    A run.json that exists but cannot be read is an error, not an empty run.
    """
    if not exists(run_json_uri(run_dir), storage_options):
        return None, pd.DataFrame()
    run = read_json(run_json_uri(run_dir), storage_options)
    history_file = history_uri(run_dir)
    if not exists(history_file, storage_options):
        return run, pd.DataFrame()
    return run, read_parquet(history_file, storage_options)


def package_versions() -> dict[str, str]:
    """Versions of Python and the libraries a run depends on."""
    import nibabel
    import ray
    import segmentation_models_pytorch as smp

    from stroke_ray import __version__

    return {
        "stroke_ray": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "segmentation_models_pytorch": smp.__version__,
        "ray": ray.__version__,
        "nibabel": nibabel.__version__,
    }
