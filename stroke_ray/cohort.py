"""Cohort manifests: read CSV/Parquet tables or discover ISLES 2015 SISS folders, validate.

A manifest has the columns ``case_id, t1, t2, flair, dwi, label`` (``label`` may be empty).
Entries are absolute local paths, URIs (``s3://``, any fsspec protocol), or paths relative
to the manifest's folder; a relative path may not escape that folder.
"""

from __future__ import annotations

import io
import posixpath
import re
from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Any

import pandas as pd

from stroke_ray.io import StorageOptions, absolute_uri, filesystem, join_uri, read_bytes

__all__ = [
    "SEQUENCES",
    "MANIFEST_COLUMNS",
    "Case",
    "ManifestError",
    "load_cohort",
    "read_manifest",
    "discover_isles_folder",
    "cases_to_frame",
]

SEQUENCES: tuple[str, ...] = ("t1", "t2", "flair", "dwi")
MANIFEST_COLUMNS: tuple[str, ...] = ("case_id", *SEQUENCES, "label")
_ISLES_TAGS = {"t1": "MR_T1", "t2": "MR_T2", "flair": "MR_Flair", "dwi": "MR_DWI", "label": "OT"}
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha")
_CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ManifestError(ValueError):
    """The cohort manifest itself is invalid (before any case is read)."""


@dataclass(frozen=True)
class Case:
    """One case: resolved URIs of its four sequences and optional label."""

    case_id: str
    t1: str
    t2: str
    flair: str
    dwi: str
    label: str | None = None
    problem: str | None = None  # why the case cannot be read (found in the manifest)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Case:
        """Inverse of :meth:`to_dict` (other keys of a row are ignored)."""
        return cls(**{item.name: values[item.name] for item in fields(cls) if item.name in values})

    def sequence_uris(self) -> dict[str, str]:
        """The four input sequences in channel order."""
        return {name: getattr(self, name) for name in SEQUENCES}

    def to_dict(self) -> dict[str, str | None]:
        """Plain dict (for Ray rows and Parquet)."""
        return asdict(self)


def _is_uri(entry: str) -> bool:
    return "://" in entry


class _EscapeError(ValueError):
    """A relative manifest path leaves the cohort folder."""


def _resolve_entry(entry: str, root: str, case_id: str, column: str) -> str:
    """Resolve a manifest entry against the manifest folder, refusing escapes."""
    if _is_uri(entry) or entry.startswith("/"):
        return entry
    normalised = posixpath.normpath(entry.replace("\\", "/"))
    if normalised == ".." or normalised.startswith("../"):
        raise _EscapeError(
            f"case {case_id}: {column} path {entry!r} escapes the cohort folder {root}; "
            "give an absolute path or URI to read outside it"
        )
    return join_uri(root, normalised)


def _case_from_row(row: dict[str, str], root: str, source: str) -> Case:
    """A case from resolved manifest cells; a path that escapes the folder becomes its problem."""
    case_id = row["case_id"]
    uris: dict[str, Any] = {}
    problems = []
    for column in (*SEQUENCES, "label"):
        if not row[column]:
            if column != "label":
                raise ManifestError(f"case {case_id}: no {column} file given in {source}")
            uris[column] = None
            continue
        try:
            uris[column] = _resolve_entry(row[column], root, case_id, column)
        except _EscapeError as err:
            uris[column], problems = row[column], [*problems, str(err)]
    return Case(case_id=case_id, problem="; ".join(problems) or None, **uris)


def _check_case_id(case_id: str) -> None:
    if not _CASE_ID_PATTERN.fullmatch(case_id) or ".." in case_id:
        raise ManifestError(
            f"case id {case_id!r} is not allowed: use letters, digits, '.', '_' or '-' "
            "(no '/', '..', NUL or leading punctuation), since it names output files"
        )


def _cell(value: object) -> str:
    """A manifest cell as stripped text; missing values (None, NaN, NA) become ""."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    return str(value).strip()


def _frame_to_cases(frame: pd.DataFrame, root: str, source: str) -> list[Case]:
    frame = frame.rename(columns=lambda column: str(column).strip())
    missing = [column for column in MANIFEST_COLUMNS[:-1] if column not in frame.columns]
    if missing:
        raise ManifestError(f"{source}: missing columns {missing}; need {list(MANIFEST_COLUMNS)}")
    if frame.empty:
        raise ManifestError(f"{source}: the manifest lists no cases")
    rows = [
        {column: _cell(row.get(column)) for column in MANIFEST_COLUMNS}
        for row in frame.to_dict(orient="records")
    ]
    duplicates = sorted(
        case for case, count in Counter(row["case_id"] for row in rows).items() if count > 1
    )
    if duplicates:
        raise ManifestError(f"{source}: duplicate case_id values {duplicates}")
    for row in rows:
        _check_case_id(row["case_id"])
    return [_case_from_row(row, root, source) for row in rows]


def read_manifest(uri: str, storage_options: StorageOptions = None) -> list[Case]:
    """Read a CSV or Parquet manifest and resolve its entries."""
    data = read_bytes(uri, storage_options)
    root = absolute_uri(uri).rstrip("/").rsplit("/", 1)[0]
    try:
        if uri.lower().endswith(".parquet"):
            frame = pd.read_parquet(io.BytesIO(data))
        else:
            frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except Exception as err:  # noqa: BLE001 - pandas raises many types for bad tables
        raise ManifestError(f"{uri}: cannot parse manifest ({err})") from err
    return _frame_to_cases(frame, root, uri)


def _isles_image(files: dict[str, str], tag: str) -> str | None:
    """The first file whose path inside the case folder carries ``.<tag>.``."""
    pattern = re.compile(rf"\.{re.escape(tag)}\.", re.IGNORECASE)
    matches = [
        uri
        for relative, uri in files.items()
        if pattern.search(relative) and relative.lower().endswith(_IMAGE_SUFFIXES)
    ]
    return sorted(matches)[0] if matches else None


def discover_isles_folder(root: str, storage_options: StorageOptions = None) -> list[Case]:
    """Build cases from an ISLES 2015 SISS folder (one sub-folder per case)."""
    fs, path = filesystem(root, storage_options)
    protocol = root.split("://", 1)[0] + "://" if _is_uri(root) else ""
    case_dirs = sorted(entry for entry in fs.ls(path, detail=False) if fs.isdir(entry))
    cases = []
    for case_dir in case_dirs:
        prefix = case_dir.rstrip("/") + "/"
        files = {file.removeprefix(prefix): protocol + file for file in fs.find(case_dir)}
        found = {key: _isles_image(files, tag) for key, tag in _ISLES_TAGS.items()}
        if not any(found[name] for name in SEQUENCES):
            continue
        case_id = posixpath.basename(case_dir.rstrip("/"))
        _check_case_id(case_id)
        missing = [name for name in SEQUENCES if not found[name]]
        if missing:
            raise ManifestError(f"case {case_id}: no {'/'.join(missing)} image under {case_dir}")
        cases.append(Case(case_id=case_id, **found))  # type: ignore[arg-type]
    if not cases:
        raise ManifestError(f"{root}: no ISLES case folders (…MR_T1…, …MR_Flair…) found")
    return cases


def load_cohort(cohort: str, storage_options: StorageOptions = None) -> list[Case]:
    """Cases from a manifest file (CSV/Parquet) or an ISLES-layout folder."""
    fs, path = filesystem(cohort, storage_options)
    if fs.isdir(path):
        for name in ("manifest.csv", "manifest.parquet"):
            candidate = join_uri(cohort, name)
            if fs.exists(join_uri(path, name)):
                return read_manifest(candidate, storage_options)
        return discover_isles_folder(cohort, storage_options)
    if not fs.exists(path):
        raise ManifestError(f"{cohort}: cohort manifest or folder not found")
    return read_manifest(cohort, storage_options)


def cases_to_frame(cases: list[Case]) -> pd.DataFrame:
    """Cases as a manifest table."""
    return pd.DataFrame([case.to_dict() for case in cases], columns=list(MANIFEST_COLUMNS))
