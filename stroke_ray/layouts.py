"""Find the cases of a cohort folder laid out as ISLES 2015 SISS, BIDS or nnU-Net raw.

Every layout is read from one recursive listing over fsspec (local paths and ``s3://`` alike):

- **ISLES 2015 SISS**: a folder per case holding ``…MR_<Sequence>.<id>…`` images and the
  label ``…OT…`` (``.nii``, ``.nii.gz``, ``.mha``).
- **BIDS** (ISLES'22, ATLAS R2.0): ``sub-<s>[_ses-<t>]_…_<suffix>.nii[.gz]`` anywhere under
  ``sub-<s>/`` folders (with or without ``anat/``/``dwi/``, under ``rawdata/`` or not); the
  suffix, lower-cased, names the sequence (``FLAIR``/``flair`` → ``flair``, ``T1w`` → ``t1``).
  The lesion mask is a ``_msk`` file or a ``_mask`` file with ``label-L`` or ``desc-*lesion*``,
  under ``derivatives/`` or beside the images. A case is a subject and session:
  ``sub-<s>_ses-<t>``.
- **nnU-Net raw**: ``imagesTr/<CASE>_<XXXX><ending>`` channel files named through
  ``dataset.json``'s ``channel_names``, labels ``labelsTr/<CASE><ending>``, unlabelled
  ``imagesTs/``.

Bad input never stops the cohort: an ambiguous case (two files for one sequence) carries a
``problem``, and a file that belongs to no case (a mask without images, a stray file) is
recorded in ``skipped`` with the reason. A case missing a sequence is listed without it; a
run that needs the sequence gives that case an error when it reads it.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from stroke_ray.case import Case, ManifestError, check_case_id, sequence_name
from stroke_ray.io import StorageOptions, filesystem, read_bytes

__all__ = [
    "Files",
    "Found",
    "LAYOUTS",
    "list_files",
    "detect_layout",
    "discover",
    "discover_isles2015",
    "discover_bids",
    "discover_nnunet",
]

Files = Mapping[str, str]  # path relative to the cohort root -> URI
Found = tuple[list[Case], dict[str, str]]  # cases, skipped file or folder -> reason

_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_ISLES_SUFFIXES = (".nii.gz", ".nii", ".mha")
_ISLES_SEQUENCE = re.compile(r"\.MR_([A-Za-z0-9]+)\.", re.IGNORECASE)
_ISLES_LABEL = re.compile(r"\.OT\.", re.IGNORECASE)
_BIDS_FOLDER = re.compile(r"^sub-[A-Za-z0-9]+$")
_BIDS_ENTITY = re.compile(r"^([A-Za-z0-9]+)-([A-Za-z0-9]+)$")
_BIDS_SUFFIX = re.compile(r"^[A-Za-z0-9]+$")
_BIDS_COMPANIONS = (".json", ".tsv", ".bval", ".bvec")
_BIDS_IGNORED = ("sourcedata", "code")
_NNUNET_FOLDERS = {"imagesTr": "labelsTr", "imagesTs": "labelsTs"}  # images -> their labels


def list_files(root: str, storage_options: StorageOptions = None) -> dict[str, str]:
    """Every file under ``root``: relative path → URI (one recursive listing)."""
    fs, path = filesystem(root, storage_options)
    protocol = root.split("://", 1)[0] + "://" if "://" in root else ""
    prefix = path.rstrip("/") + "/"
    return {
        file.removeprefix(prefix): protocol + file
        for file in sorted(fs.find(path))
        if file.startswith(prefix)
    }


def detect_layout(files: Files) -> str:
    """``nnunet`` (dataset.json + imagesTr/imagesTs), ``bids`` (sub-* folders) or ``isles2015``."""
    folders = {relative.split("/", 1)[0] for relative in files if "/" in relative}
    if "dataset.json" in files and folders & set(_NNUNET_FOLDERS):
        return "nnunet"
    if any(_BIDS_FOLDER.match(part) for relative in files for part in relative.split("/")[:-1]):
        return "bids"
    return "isles2015"


# --------------------------------------------------------------------------- ISLES 2015


def _isles_case(case_id: str, files: Files) -> Case | None:
    """A case from one case folder's files (relative to it); None without any MR image."""
    images: dict[str, str] = {}
    label = None
    for relative, uri in sorted(files.items()):
        if not relative.lower().endswith(_ISLES_SUFFIXES):
            continue
        if match := _ISLES_SEQUENCE.search(relative):
            images.setdefault(sequence_name(match[1]), uri)
        elif _ISLES_LABEL.search(relative) and label is None:
            label = uri
    return Case(case_id=case_id, images=images, label=label) if images else None


def discover_isles2015(files: Files, storage_options: StorageOptions = None) -> Found:
    """Cases of an ISLES 2015 SISS folder (one sub-folder per case, first file per tag)."""
    by_folder: dict[str, dict[str, str]] = defaultdict(dict)
    skipped: dict[str, str] = {}
    for relative, uri in files.items():
        folder, _, inner = relative.partition("/")
        if inner:
            by_folder[folder][inner] = uri
        else:
            skipped[relative] = "stray file beside the case folders"
    cases = []
    for folder, inner_files in sorted(by_folder.items()):
        case = _isles_case(folder, inner_files)
        if case is None:
            skipped[folder + "/"] = "no ISLES image (…MR_<sequence>…) inside"
            continue
        try:
            check_case_id(folder)
        except ManifestError as err:
            skipped[folder + "/"] = str(err)
            continue
        cases.append(case)
    return cases, skipped


# --------------------------------------------------------------------------- BIDS


def _bids_entities(name: str) -> tuple[dict[str, str], str] | None:
    """(entities, suffix) of ``sub-X_ses-Y_…_<suffix>.nii[.gz]``; None for another name."""
    parts = _NIFTI.sub("", name).split("_")
    entities = {}
    for part in parts[:-1]:
        match = _BIDS_ENTITY.match(part)
        if match is None:
            return None
        entities[match[1]] = match[2]
    if "sub" not in entities or not _BIDS_SUFFIX.match(parts[-1]):
        return None
    return entities, parts[-1]


def _is_lesion_mask(entities: Mapping[str, str], suffix: str) -> bool:
    if suffix.lower() == "msk":
        return True
    lesion = entities.get("label", "").lower() in ("l", "lesion")
    return suffix.lower() == "mask" and (lesion or "lesion" in entities.get("desc", "").lower())


def _bids_role(relative: str) -> tuple[str, tuple[str, str | None]] | str:
    """("label" or a sequence name, (subject, session)) of a NIfTI file, or why it is skipped."""
    parts = relative.split("/")
    parsed = _bids_entities(parts[-1])
    if parsed is None:
        return "not a BIDS image name (sub-<label>[_ses-<label>]_…_<suffix>.nii.gz)"
    entities, suffix = parsed
    key = (entities["sub"], entities.get("ses"))
    if _is_lesion_mask(entities, suffix):
        return "label", key
    if suffix.lower() in ("mask", "dseg", "probseg"):
        return "not a lesion mask (no _msk, label-L or desc-*lesion*)"
    if "derivatives" in parts[:-1]:
        return "derivative image that is not a lesion mask"
    return sequence_name(suffix), key


def _is_bids_data(parts: list[str]) -> bool:
    """Whether a file is named ``sub-…`` or lies under a sub-* folder, outside sourcedata/,
    code/ and hidden folders."""
    folders = parts[:-1]
    if folders and (folders[0] in _BIDS_IGNORED or any(p.startswith(".") for p in folders)):
        return False
    return parts[-1].startswith("sub-") or any(_BIDS_FOLDER.match(part) for part in folders)


def _bids_case(key: tuple[str, str | None], found: Mapping[str, list[str]], files: Files) -> Case:
    subject, session = key
    case_id = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    problems = [
        f"case {case_id}: {len(paths)} {role} files ({', '.join(paths)}); keep one"
        for role, paths in sorted(found.items())
        if len(paths) > 1
    ]
    return Case(
        case_id=case_id,
        images={role: files[paths[0]] for role, paths in found.items() if role != "label"},
        label=files[found["label"][0]] if "label" in found else None,
        problem="; ".join(problems) or None,
        subject=subject,
        session=session,
    )


def discover_bids(files: Files, storage_options: StorageOptions = None) -> Found:
    """Cases of a BIDS dataset: one per subject and session, masks from derivatives/ or beside."""
    found: dict[tuple[str, str | None], dict[str, list[str]]] = defaultdict(
        lambda: defaultdict(list)
    )
    skipped: dict[str, str] = {}
    for relative in files:
        parts = relative.split("/")
        if not _is_bids_data(parts) or parts[-1].lower().endswith(_BIDS_COMPANIONS):
            continue  # dataset files (participants.tsv, code/, …), sidecars, gradient tables
        role = _bids_role(relative) if _NIFTI.search(parts[-1]) else "not a NIfTI image"
        if isinstance(role, str):
            skipped[relative] = role
            continue
        name, key = role
        found[key][name].append(relative)
    cases = []
    for key, roles in sorted(found.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        if set(roles) == {"label"}:
            for relative in roles["label"]:
                skipped[relative] = "lesion mask without images of its subject/session"
            continue
        cases.append(_bids_case(key, roles, files))
    return cases, skipped


# --------------------------------------------------------------------------- nnU-Net


def _nnunet_description(files: Files, options: StorageOptions) -> tuple[dict[int, str], str]:
    """dataset.json's channel names (number → sequence) and file ending."""
    uri = files["dataset.json"]
    try:
        description: dict[str, Any] = json.loads(read_bytes(uri, options))
        channels = description.get("channel_names") or description["modality"]
        names = {int(number): sequence_name(str(name)) for number, name in channels.items()}
    except Exception as err:  # noqa: BLE001 - bad JSON, missing keys, bad names: one message
        raise ManifestError(
            f"{uri}: not an nnU-Net dataset.json with channel_names ({type(err).__name__}: {err})"
        ) from err
    if len(set(names.values())) != len(names):
        raise ManifestError(f"{uri}: two channels share a sequence name ({channels})")
    return names, str(description.get("file_ending", ".nii.gz"))


def _nnunet_images(files: Files, names: Mapping[int, str], ending: str):
    """Channel files by case, each case's images folder, and the files skipped."""
    channel_file = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
    images: dict[str, dict[str, str]] = defaultdict(dict)
    folder_of: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for relative, uri in files.items():
        folder, _, name = relative.partition("/")
        if folder not in _NNUNET_FOLDERS or "/" in name:
            continue
        match = channel_file.match(name)
        if match is None:
            skipped[relative] = f"not a channel file <CASE>_<XXXX>{ending}"
        elif int(match[2]) not in names:
            skipped[relative] = f"channel {match[2]} is not in dataset.json channel_names"
        elif folder_of.setdefault(match[1], folder) != folder:
            skipped[relative] = f"case {match[1]} is also in {folder_of[match[1]]}/"
        else:
            images[match[1]][names[int(match[2])]] = uri
    return images, folder_of, skipped


def discover_nnunet(files: Files, storage_options: StorageOptions = None) -> Found:
    """Cases of an nnU-Net raw dataset (imagesTr + labelsTr labelled, imagesTs unlabelled)."""
    names, ending = _nnunet_description(files, storage_options)
    images, folder_of, skipped = _nnunet_images(files, names, ending)
    labels: dict[str, str] = {}
    for relative, uri in files.items():
        folder, _, name = relative.partition("/")
        if folder not in _NNUNET_FOLDERS.values() or "/" in name:
            continue
        case_id = name.removesuffix(ending)
        if name.endswith(ending) and _NNUNET_FOLDERS.get(folder_of.get(case_id, "")) == folder:
            labels[case_id] = uri
        else:
            skipped[relative] = "label without images"
    cases = []
    for case_id, channels in sorted(images.items()):
        try:
            check_case_id(case_id)
        except ManifestError as err:
            skipped[f"{folder_of[case_id]}/{case_id}_*"] = str(err)
            continue
        cases.append(Case(case_id=case_id, images=channels, label=labels.get(case_id)))
    return cases, skipped


DISCOVER: dict[str, Callable[[Files, StorageOptions], Found]] = {
    "isles2015": discover_isles2015,
    "bids": discover_bids,
    "nnunet": discover_nnunet,
}
LAYOUTS: tuple[str, ...] = tuple(DISCOVER)


def discover(root: str, storage_options: StorageOptions = None) -> tuple[str, list[Case], dict]:
    """(layout, cases, skipped) of a cohort folder without a manifest."""
    files = list_files(root, storage_options)
    layout = detect_layout(files)
    cases, skipped = DISCOVER[layout](files, storage_options)
    return layout, cases, skipped
