"""Synthetic stroke MRI cohorts, written in the layouts real cohorts come in.

Each case is a :mod:`stroke_ray.phantom` head (lesions of several stages beside look-alikes
that are not lesion), deterministic in ``(seed, case index)``. Layouts:

- ``manifest``: ``<case>/<case>_<seq>.nii.gz`` and ``manifest.csv`` (case_id, one column per
  sequence, label);
- ``bids``: ISLES'22, ``sub-strokecase0001/ses-0001/{anat,dwi}/…_{FLAIR,dwi,adc}.nii.gz`` with
  masks in ``derivatives/sub-…/ses-…/…_msk.nii.gz``; anatomical images (FLAIR, T1w, T2w) lie on
  a grid of their own and are not registered to DWI (the head moved 1-2 mm between them);
- ``bids-flat``: the older ISLES'22 release, flat under ``rawdata/sub-…/ses-…/`` with lowercase
  suffixes (``_flair``, ``_dwi``, ``_adc``), the same grids and masks;
- ``atlas``: ATLAS R2.0, ``sub-r001s001/ses-1/anat/…_space-MNI152NLin2009aSym_T1w.nii.gz`` with
  ``…_label-L_desc-T1lesion_mask.nii.gz`` (T1w only);
- ``nnunet``: nnU-Net raw, ``imagesTr/{CASE}_{XXXX}.nii.gz``, ``labelsTr/{CASE}.nii.gz`` and
  ``dataset.json``;
- ``isles15``: ISLES 2015 SISS, ``<n>/VSD.Brain.XX.O.MR_<seq>.<id>/….nii`` and ``…OT…`` labels.

A share of the cases (``thick_fraction``) is written with thick slices: the head is rendered at
the fine grid and slabs of slices are averaged along z (partial volume); the label is the slab
majority and the affine carries the slab thickness.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from stroke_ray import __version__
from stroke_ray.cohort import SEQUENCES
from stroke_ray.phantom import SEQUENCE_NAMES, Grid, draw_phantom, rasterise, render

__all__ = ["LAYOUTS", "SEQUENCE_NAMES", "layout_sequences", "generate_cohort", "synth_case"]

logger = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("manifest", "bids", "bids-flat", "atlas", "nnunet", "isles15")
# The sequences a layout holds when none are asked for: the paper's four, or the dataset's own.
_LAYOUT_SEQUENCES = {
    "manifest": SEQUENCES,
    "bids": ("dwi", "adc", "flair"),
    "bids-flat": ("dwi", "adc", "flair"),
    "atlas": ("t1",),
    "nnunet": SEQUENCES,
    "isles15": SEQUENCES,
}
_BIDS_LAYOUTS = ("bids", "bids-flat")
_ANATOMICAL = ("t1", "t2", "flair")  # BIDS ``anat``: on a grid of their own
_BIDS_SUFFIX = {"t1": "T1w", "t2": "T2w", "flair": "FLAIR", "dwi": "dwi", "adc": "adc"}
_NNUNET_CHANNEL = {"t1": "T1", "t2": "T2", "flair": "FLAIR", "dwi": "DWI", "adc": "ADC"}
_ISLES15_TAG = {"t1": "MR_T1", "t2": "MR_T2", "flair": "MR_Flair", "dwi": "MR_DWI"}
_ATLAS_SPACE = "space-MNI152NLin2009aSym"
_MOTION_MM = (1.0, 2.0)  # how far the head moves between the DWI and the anatomical scans


def layout_sequences(layout: str, sequences: Sequence[str] | None = None) -> tuple[str, ...]:
    """The sequences a cohort of ``layout`` holds (``None``: the layout's own set); checked."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {list(LAYOUTS)}")
    chosen = tuple(_LAYOUT_SEQUENCES[layout] if sequences is None else sequences)
    unknown = [seq for seq in chosen if seq not in SEQUENCE_NAMES]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"sequences {list(chosen)}: give distinct names from {list(SEQUENCE_NAMES)}"
        )
    if layout == "atlas" and chosen != ("t1",):
        raise ValueError(f"the atlas layout (ATLAS R2.0) holds T1w only, not {list(chosen)}")
    if layout == "isles15" and "adc" in chosen:
        raise ValueError("the isles15 layout (ISLES 2015 SISS) has no ADC map")
    return chosen


def synth_case(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing_mm: float,
    *,
    lesion_count: int,
    sequences: Sequence[str] = SEQUENCES,
) -> dict[str, np.ndarray]:
    """One case on the centred isotropic grid: each sequence (float32) and the label (uint8)."""
    phantom, scene = draw_phantom(rng, Grid.centred(shape, spacing_mm), lesion_count=lesion_count)
    return render(phantom, scene, sequences, int(rng.integers(2**31)))


def _case_lesion_count(rng: np.random.Generator, case_index: int) -> int:
    """Return the number of lesions of a case: none for case 1, three for case 2, else 1-3."""
    if case_index == 1:
        return 0
    if case_index == 2:
        return 3
    return int(rng.integers(1, 4))


def _is_thick(case_index: int, thick_fraction: float) -> bool:
    """Whether a case has thick slices: ``thick_fraction`` of every run of cases, spread evenly."""
    return math.floor((case_index + 1) * thick_fraction + 1e-9) > math.floor(
        case_index * thick_fraction + 1e-9
    )


def _slab_factor(spacing_mm: float, slice_thickness_mm: float, slices: int) -> int:
    """Fine slices per thick slice (at least 2; 1 when the volume is too thin for two slabs)."""
    factor = max(2, round(slice_thickness_mm / spacing_mm))
    return factor if slices >= 2 * factor else 1


def _anatomical_grid(grid: Grid) -> Grid:
    """The BIDS anatomical (FLAIR) grid: finer, down to 1 mm, over the same field of view."""
    spacing = grid.spacing_mm[0]
    anat_spacing = max(spacing * 2 / 3, min(spacing, 1.0))
    shape = np.ceil(grid.fov_mm * np.array([1.0, 1.0, 1.1]) / anat_spacing).astype(int)
    return Grid.centred(shape, anat_spacing)


@dataclass(frozen=True)
class _Naming:
    """Where one case's files go in a layout (paths relative to the cohort root)."""

    case_id: str
    files: dict[str, str]  # sequence or "label" -> relative path


def _naming(layout: str, case_index: int, sequences: Sequence[str]) -> _Naming:
    number = case_index + 1
    if layout in _BIDS_LAYOUTS:
        subject, session = f"sub-strokecase{number:04d}", "ses-0001"
        stem = f"{subject}_{session}"
        files = {}
        for seq in sequences:
            if layout == "bids":
                datatype = "anat" if seq in _ANATOMICAL else "dwi"
                files[seq] = f"{subject}/{session}/{datatype}/{stem}_{_BIDS_SUFFIX[seq]}.nii.gz"
            else:
                files[seq] = (
                    f"rawdata/{subject}/{session}/{stem}_{_BIDS_SUFFIX[seq].lower()}.nii.gz"
                )
        files["label"] = f"derivatives/{subject}/{session}/{stem}_msk.nii.gz"
        return _Naming(subject, files)
    if layout == "atlas":
        subject, session = f"sub-r{1 + case_index // 999:03d}s{1 + case_index % 999:03d}", "ses-1"
        stem = f"{subject}/{session}/anat/{subject}_{session}_{_ATLAS_SPACE}"
        return _Naming(
            subject,
            {"t1": f"{stem}_T1w.nii.gz", "label": f"{stem}_label-L_desc-T1lesion_mask.nii.gz"},
        )
    if layout == "isles15":
        first_id = 70000 + 10 * case_index
        tags = [_ISLES15_TAG[seq] for seq in sequences]
        names = [f"VSD.Brain.XX.O.{tag}.{first_id + i}" for i, tag in enumerate(tags)]
        names.append(f"VSD.Brain_3more.XX.O.OT.{first_id + len(tags)}")
        keys = [*sequences, "label"]
        files = {key: f"{number}/{name}/{name}.nii" for key, name in zip(keys, names, strict=True)}
        return _Naming(str(number), files)
    case_id = f"demo_{case_index:03d}"
    if layout == "nnunet":
        files = {seq: f"imagesTr/{case_id}_{i:04d}.nii.gz" for i, seq in enumerate(sequences)}
        return _Naming(case_id, {**files, "label": f"labelsTr/{case_id}.nii.gz"})
    keys = [*sequences, "label"]
    return _Naming(case_id, {key: f"{case_id}/{case_id}_{key}.nii.gz" for key in keys})


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write `array` as NIfTI-1 with qform and sform both set to `affine` (code 1, mm)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def _write_case(
    out_dir: Path,
    seed: int,
    case_index: int,
    shape: tuple[int, int, int],
    spacing_mm: float,
    sequences: tuple[str, ...] = SEQUENCES,
    layout: str = "manifest",
    thick_fraction: float = 0.0,
    slice_thickness_mm: float = 5.0,
) -> dict[str, str]:
    """Write one case (deterministic in seed and index); return its manifest row."""
    rng = np.random.default_rng([seed, case_index])
    lesion_count = _case_lesion_count(rng, case_index)
    grid = Grid.centred(shape, spacing_mm)
    phantom, scene = draw_phantom(rng, grid, lesion_count=lesion_count)
    render_seed = int(rng.integers(2**31))
    motion = rng.normal(size=3)
    motion *= rng.uniform(*_MOTION_MM) / np.linalg.norm(motion)

    own_grid = [seq for seq in sequences if layout in _BIDS_LAYOUTS and seq in _ANATOMICAL]
    case_grid = [seq for seq in sequences if seq not in own_grid]
    slab = 1
    if _is_thick(case_index, thick_fraction):
        slab = _slab_factor(spacing_mm, slice_thickness_mm, shape[2])
    out_grid = grid.slabs(slab)[0] if slab > 1 else grid
    images = render(phantom, scene, case_grid, render_seed, slab=slab)
    affines = dict.fromkeys(images, out_grid.affine)
    if own_grid:
        anat_grid = _anatomical_grid(grid)
        anat_scene = rasterise(phantom, anat_grid.moved(-motion))
        anat = render(phantom, anat_scene, own_grid, render_seed)
        del anat["label"]
        images.update(anat)
        affines.update(dict.fromkeys(anat, anat_grid.affine))

    naming = _naming(layout, case_index, sequences)
    for key, rel_path in naming.files.items():
        _save_nifti(images[key], affines[key], out_dir / rel_path)
    logger.debug("wrote %s: %s lesion(s), slab %d", naming.case_id, phantom.stages or "no", slab)
    return {"case_id": naming.case_id, **naming.files}


def _bids_description(name: str) -> dict:
    return {
        "Name": name,
        "BIDSVersion": "1.8.0",
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "stroke-ray demo", "Version": __version__}],
    }


def _write_index(
    out_dir: Path, layout: str, sequences: tuple[str, ...], rows: list[dict[str, str]]
) -> Path:
    """Write the layout's own index file; return what ``--cohort`` takes."""
    if layout == "manifest":
        manifest = out_dir / "manifest.csv"
        with manifest.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["case_id", *sequences, "label"])
            writer.writeheader()
            writer.writerows(rows)
        return manifest
    if layout == "nnunet":
        dataset = {
            "name": "StrokeRayDemo",
            "description": "synthetic ischemic stroke MRI (stroke-ray demo)",
            "channel_names": {str(i): _NNUNET_CHANNEL[seq] for i, seq in enumerate(sequences)},
            "labels": {"background": 0, "lesion": 1},
            "numTraining": len(rows),
            "file_ending": ".nii.gz",
        }
        (out_dir / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    elif layout != "isles15":
        title = "ATLAS R2.0" if layout == "atlas" else "ISLES'22"
        description = _bids_description(f"stroke-ray synthetic {title}-style cohort")
        (out_dir / "dataset_description.json").write_text(json.dumps(description, indent=2) + "\n")
    return out_dir


def generate_cohort(
    out_dir: str | Path,
    *,
    n_cases: int = 8,
    shape: tuple[int, int, int] = (64, 64, 48),
    spacing_mm: float = 3.0,
    seed: int = 0,
    workers: int = 1,
    layout: str = "manifest",
    sequences: Sequence[str] | None = None,
    thick_fraction: float = 0.5,
    slice_thickness_mm: float = 5.0,
) -> Path:
    """Write a synthetic cohort (``workers`` processes); return what ``--cohort`` takes.

    That is the manifest for the ``manifest`` layout and the cohort folder otherwise.
    ``shape`` and ``spacing_mm`` give the fine grid (the DWI grid in BIDS layouts);
    ``thick_fraction`` of the cases get slices of about ``slice_thickness_mm`` (whole
    multiples of ``spacing_mm``, at least two).
    """
    sequences = layout_sequences(layout, sequences)
    if not 0.0 <= thick_fraction <= 1.0:
        raise ValueError(f"thick_fraction {thick_fraction} is not between 0 and 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    start = time.perf_counter()
    options = (sequences, layout, float(thick_fraction), float(slice_thickness_mm))
    arguments = [(out_dir, seed, index, shape, spacing_mm, *options) for index in range(n_cases)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(_write_case, *zip(*arguments, strict=True)))
    else:
        rows = [_write_case(*values) for values in arguments]
    cohort = _write_index(out_dir, layout, sequences, rows)
    logger.info(
        "synthetic %s cohort: %d cases of %s at %.1f mm (%s) in %s (%.1f s)",
        layout,
        n_cases,
        shape,
        spacing_mm,
        " ".join(sequences),
        out_dir,
        time.perf_counter() - start,
    )
    return cohort
