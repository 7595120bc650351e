"""Cohorts: manifests (CSV/Parquet), and the dispatch that finds the cases of any input.

A manifest has a ``case_id`` column, one column per sequence (the column name is the
sequence's name: ``t1, t2, flair, dwi`` for the paper, any other such as ``adc``), ``label``
(may be empty) and optional ``subject``, ``session`` and ``problem`` columns. An empty cell
means the case has no such sequence. Entries are absolute local paths, URIs (``s3://``, any
fsspec protocol), or paths relative to the manifest's folder; a relative path may not escape
that folder. A folder is read as its ``manifest.csv``/``manifest.parquet`` when it has one,
else by its layout (:mod:`stroke_ray.layouts`: ISLES 2015 SISS, BIDS, nnU-Net raw).
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from stroke_ray.case import Case, ManifestError, check_case_id, sequence_name
from stroke_ray.config import SEQUENCES
from stroke_ray.io import (
    StorageOptions,
    absolute_uri,
    filesystem,
    join_uri,
    read_bytes,
    write_bytes_atomic,
)
from stroke_ray.layouts import discover

__all__ = [
    "SEQUENCES",
    "MANIFEST_COLUMNS",
    "Case",
    "Cohort",
    "ManifestError",
    "scan_cohort",
    "find_cohort",
    "load_cohort",
    "read_manifest",
    "cases_to_frame",
    "write_manifest",
    "describe_cohort",
]

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = ("case_id", *SEQUENCES, "label")  # the paper's manifest
_CASE_COLUMNS: tuple[str, ...] = ("case_id", "label", "subject", "session", "problem")


@dataclass
class Cohort:
    """What a cohort path holds: its layout, cases, and the files or folders it skipped."""

    layout: str  # manifest, isles2015, bids, nnunet
    source: str  # the manifest file or the folder
    cases: list[Case]
    skipped: dict[str, str] = field(default_factory=dict)  # file or folder -> reason


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


def _case_from_row(row: dict[str, str], sequences: list[str], root: str) -> Case:
    """A case from manifest cells; a path that escapes the folder becomes its problem."""
    case_id = row["case_id"]
    uris: dict[str, str] = {}
    problems = [row["problem"]] if row.get("problem") else []
    for column in (*sequences, "label"):
        if not row[column]:
            continue
        try:
            uris[column] = _resolve_entry(row[column], root, case_id, column)
        except _EscapeError as err:
            uris[column], problems = row[column], [*problems, str(err)]
    return Case(
        case_id=case_id,
        images={name: uris[name] for name in sequences if name in uris},
        label=uris.get("label"),
        problem="; ".join(problems) or None,
        subject=row.get("subject") or None,
        session=row.get("session") or None,
    )


def _cell(value: object) -> str:
    """A manifest cell as stripped text; missing values (None, NaN, NA) become ""."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    return str(value).strip()


def _column_name(column: object, source: str) -> str:
    """A manifest column's name: case_id, label, subject, session, problem, or a sequence."""
    name = str(column).strip().lower()
    if name in _CASE_COLUMNS:
        return name
    try:
        return sequence_name(name)
    except ValueError as err:
        raise ManifestError(
            f"{source}: column {err}; every column but {list(_CASE_COLUMNS)} names a sequence"
        ) from err


def _frame_to_cases(frame: pd.DataFrame, root: str, source: str) -> list[Case]:
    frame = frame.set_axis([_column_name(column, source) for column in frame.columns], axis=1)
    repeated = sorted(c for c, count in Counter(frame.columns).items() if count > 1)
    if repeated:
        raise ManifestError(f"{source}: repeated columns {repeated}")
    sequences = [column for column in frame.columns if column not in _CASE_COLUMNS]
    if "case_id" not in frame.columns or not sequences:
        raise ManifestError(
            f"{source}: need a case_id column and a column per sequence, e.g. "
            f"{list(MANIFEST_COLUMNS)}; found {list(frame.columns)}"
        )
    if frame.empty:
        raise ManifestError(f"{source}: the manifest lists no cases")
    columns = ["case_id", *sequences, *(c for c in _CASE_COLUMNS[1:] if c in frame.columns)]
    rows = [
        {column: _cell(row.get(column)) for column in columns}
        for row in frame.to_dict(orient="records")
    ]
    duplicates = sorted(
        case for case, count in Counter(row["case_id"] for row in rows).items() if count > 1
    )
    if duplicates:
        raise ManifestError(f"{source}: duplicate case_id values {duplicates}")
    for row in rows:
        check_case_id(row["case_id"])
        row.setdefault("label", "")
    return [_case_from_row(row, sequences, root) for row in rows]


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


def scan_cohort(cohort: str, storage_options: StorageOptions = None) -> Cohort:
    """Everything a cohort path holds: a manifest file, a folder with one, or a layout folder."""
    fs, path = filesystem(cohort, storage_options)
    if fs.isdir(path):
        for name in ("manifest.csv", "manifest.parquet"):
            if fs.exists(join_uri(path, name)):
                uri = join_uri(cohort, name)
                return Cohort("manifest", uri, read_manifest(uri, storage_options))
        layout, cases, skipped = discover(cohort, storage_options)
        return Cohort(layout, cohort, cases, skipped)
    if not fs.exists(path):
        raise ManifestError(f"{cohort}: cohort manifest or folder not found")
    return Cohort("manifest", cohort, read_manifest(cohort, storage_options))


def find_cohort(cohort: str, storage_options: StorageOptions = None) -> Cohort:
    """A cohort with cases (what it skipped is logged); ManifestError without any."""
    found = scan_cohort(cohort, storage_options)
    for item, reason in found.skipped.items():
        logger.warning("cohort %s: skipped %s: %s", cohort, item, reason)
    if not found.cases:
        raise ManifestError(
            f"{cohort}: no cases found ({found.layout} layout; {len(found.skipped)} files or "
            "folders skipped). A cohort is a manifest, or a folder with one, or an ISLES 2015 "
            "SISS, BIDS or nnU-Net raw folder"
        )
    return found


def load_cohort(cohort: str, storage_options: StorageOptions = None) -> list[Case]:
    """The cases of a cohort path (see :func:`find_cohort`)."""
    return find_cohort(cohort, storage_options).cases


def cases_to_frame(cases: list[Case]) -> pd.DataFrame:
    """Cases as a manifest table (a column per sequence any case has, paper's first)."""
    present = {name for case in cases for name in case.images}
    sequences = [name for name in SEQUENCES if name in present] + sorted(present - set(SEQUENCES))
    rows = [
        {"case_id": case.case_id, **case.images, "label": case.label, "subject": case.subject,
         "session": case.session, "problem": case.problem}
        for case in cases
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["case_id", *sequences, *_CASE_COLUMNS[1:]])


def write_manifest(cases: list[Case], uri: str, storage_options: StorageOptions = None) -> str:
    """Write cases as a manifest CSV (atomically); return ``uri``."""
    write_bytes_atomic(cases_to_frame(cases).to_csv(index=False).encode(), uri, storage_options)
    return uri


def describe_cohort(cohort: Cohort) -> list[str]:
    """Lines saying what a cohort holds: layout, cases, sequences, labels, problems, skips."""
    labelled = sum(1 for case in cohort.cases if case.label)
    per_sequence = Counter(name for case in cohort.cases for name in case.images)
    per_set = Counter(" ".join(sorted(case.images)) for case in cohort.cases)
    problems = {case.case_id: case.problem for case in cohort.cases if case.problem}
    return [
        f"layout: {cohort.layout} ({cohort.source})",
        f"cases: {len(cohort.cases)} ({labelled} labelled, {len(cohort.cases) - labelled} "
        "unlabelled)",
        "sequences (cases with each): "
        + ", ".join(f"{name} {count}" for name, count in sorted(per_sequence.items())),
        "sequence sets (cases with each): "
        + "; ".join(f"{names}: {count}" for names, count in sorted(per_set.items())),
        f"cases with a problem: {len(problems)}",
        *(
            f"  {problem}" if problem.startswith(f"case {case_id}:") else f"  {case_id}: {problem}"
            for case_id, problem in problems.items()
        ),
        f"skipped: {len(cohort.skipped)}",
        *(f"  {item}: {reason}" for item, reason in sorted(cohort.skipped.items())),
    ]
