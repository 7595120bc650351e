"""Masks as a BIDS derivatives dataset (``segment --layout bids``).

```
OUT/
  dataset_description.json     DatasetType "derivative", GeneratedBy stroke-ray <version>
  .bidsignore                  stroke-ray's own files (cases/, qc/, metrics.parquet, …)
  sub-X/ses-Y/<datatype>/sub-X_ses-Y_space-orig_label-L_mask.nii.gz   fused mask
  sub-X/ses-Y/<datatype>/sub-X_ses-Y_space-orig_label-L_mask.json     Type, Sources, SpatialReference
```
``<datatype>`` is the reference sequence's: ``dwi`` for DWI and ADC, ``anat`` otherwise. A case
without subject/session (a manifest case) is ``sub-<case id>`` without a session; BIDS labels
are letters and digits, so other characters are dropped. The mask is in the reference image's
geometry (``space-orig``), as the flat layout's masks.
"""

from __future__ import annotations

import re
from typing import Any

from stroke_ray.io import StorageOptions, join_uri, write_bytes_atomic, write_json

__all__ = [
    "BIDS_VERSION",
    "bids_mask_uri",
    "sidecar",
    "sidecar_uri",
    "write_dataset_files",
]

BIDS_VERSION = "1.10.0"
_DATATYPES = {"dwi": "dwi", "adc": "dwi"}  # everything else (flair, t1, t2, …) is anat
_NOT_LABEL = re.compile(r"[^A-Za-z0-9]")
_IGNORED = ("cases/", "qc/", "planes/", "probability/", "*.parquet", "summary.json",
            "segment.json", "report.html")  # fmt: skip


def _label(value: str, prefix: str) -> str:
    """A BIDS label: ``value`` without a leading ``sub-``/``ses-`` and non-alphanumerics."""
    return _NOT_LABEL.sub("", value.removeprefix(prefix))


def bids_mask_uri(
    out: str, case_id: str, subject: str | None, session: str | None, reference: str
) -> str:
    """Where a case's fused mask goes in the BIDS layout."""
    sub = f"sub-{_label(subject or case_id, 'sub-')}"
    folders = [sub]
    if session:
        folders.append(f"ses-{_label(session, 'ses-')}")
    name = "_".join(folders) + "_space-orig_label-L_mask.nii.gz"
    return join_uri(out, *folders, _DATATYPES.get(reference, "anat"), name)


def sidecar_uri(mask_uri: str) -> str:
    """The JSON sidecar beside a mask."""
    return mask_uri.removesuffix(".nii.gz") + ".json"


def _source(reference_uri: str, bids_root: str | None) -> str:
    """A BIDS URI into the raw dataset where the reference lies in it, else its URI."""
    root = (bids_root or "").rstrip("/") + "/"
    if bids_root and reference_uri.startswith(root):
        return "bids:raw:" + reference_uri.removeprefix(root)
    return reference_uri


def sidecar(reference_uri: str, bids_root: str | None) -> dict[str, Any]:
    """A lesion mask's sidecar: what it is and which image it was segmented on."""
    source = _source(reference_uri, bids_root)
    return {"Type": "Lesion", "Sources": [source], "SpatialReference": source}


def write_dataset_files(out: str, bids_root: str | None, options: StorageOptions = None) -> None:
    """dataset_description.json (linking the raw dataset where there is one) and .bidsignore."""
    from stroke_ray import __version__

    description: dict[str, Any] = {
        "Name": "stroke-ray lesion masks",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "stroke-ray", "Version": __version__}],
    }
    if bids_root:
        description["DatasetLinks"] = {"raw": bids_root}
    write_json(description, join_uri(out, "dataset_description.json"), options)
    write_bytes_atomic("\n".join(_IGNORED).encode() + b"\n", join_uri(out, ".bidsignore"), options)
