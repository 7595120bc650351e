"""The run folder: where a training run keeps its models, split, history and summary.

```
RUN_DIR/
  run.json            config, package versions, split, skipped cases, per-plane results
  history.parquet     one row per plane and epoch (train/val loss, val Dice, lr, ...)
  models/<plane>.pt   best-validation-Dice weights of each plane (state dict only)
  ray/<plane>/        Ray Train storage: checkpoints that let a run resume
```
Local paths and fsspec URIs alike; every file is written atomically.
"""

from __future__ import annotations

import io
import json
import platform
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from stroke_ray.io import StorageOptions, exists, join_uri, read_bytes, write_bytes_atomic
from stroke_ray.model import ModelConfig, build_model, load_weights

__all__ = [
    "RunNotReadyError",
    "finished_run",
    "model_uri",
    "history_uri",
    "run_json_uri",
    "ray_storage_uri",
    "save_plane_model",
    "plane_model_exists",
    "load_plane_model",
    "write_json",
    "read_json",
    "write_parquet",
    "read_parquet",
    "package_versions",
]


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


def write_json(
    payload: Mapping[str, Any], uri: str, storage_options: StorageOptions = None
) -> None:
    """Atomically write indented JSON."""
    text = json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n"
    write_bytes_atomic(text.encode(), uri, storage_options)


def read_json(uri: str, storage_options: StorageOptions = None) -> dict[str, Any]:
    """Read a JSON file."""
    return json.loads(read_bytes(uri, storage_options))


def write_parquet(frame: pd.DataFrame, uri: str, storage_options: StorageOptions = None) -> None:
    """Atomically write a DataFrame as Parquet."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes_atomic(buffer.getvalue(), uri, storage_options)


def read_parquet(uri: str, storage_options: StorageOptions = None) -> pd.DataFrame:
    """Read a Parquet file into a DataFrame."""
    return pd.read_parquet(io.BytesIO(read_bytes(uri, storage_options)))


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
    model = build_model(ModelConfig.from_dict(run["model"]), "none")
    load_weights(model, model_uri(run_dir, plane), storage_options)
    return model.eval()


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
