"""Files over fsspec (local paths, ``s3://``, any fsspec URI): NIfTI/MHA images, JSON, Parquet.

Reading never copies a cohort to disk: a NIfTI file is read into memory as bytes and parsed
by nibabel; ``.mha`` (MetaImage) goes through SimpleITK, which needs a local path, so a
remote ``.mha`` is staged in a temporary file for the duration of the read only.
Writes are atomic: bytes go to a temporary name beside the target, then are renamed.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
import uuid
import zlib
from collections.abc import Mapping
from typing import Any

import fsspec
import nibabel as nib
import numpy as np
import pandas as pd

__all__ = [
    "ImageReadError",
    "StorageOptions",
    "filesystem",
    "absolute_uri",
    "exists",
    "remove_tree",
    "join_uri",
    "read_bytes",
    "read_image",
    "write_bytes_atomic",
    "write_nifti_atomic",
    "nifti_bytes",
    "image_like",
    "write_json",
    "read_json",
    "write_parquet",
    "read_parquet",
]

StorageOptions = Mapping[str, Any] | None
_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_MAGICS = (b"n+1\x00", b"ni1\x00")
_NIFTI2_MAGICS = (b"n+2\x00", b"ni2\x00")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class ImageReadError(ValueError):
    """An image file is missing, unreadable or not a valid NIfTI/MHA volume."""


def filesystem(
    uri: str, storage_options: StorageOptions = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``uri`` and the path on it."""
    return fsspec.core.url_to_fs(uri, **dict(storage_options or {}))


def absolute_uri(uri: str) -> str:
    """A URI unchanged, a local path made absolute (Ray workers do not share our cwd)."""
    return uri if "://" in uri else os.path.abspath(uri)


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with forward slashes."""
    joined = base.rstrip("/")
    for part in parts:
        joined = f"{joined}/{part.strip('/')}"
    return joined


def exists(uri: str, storage_options: StorageOptions = None) -> bool:
    """Whether a file exists at ``uri``."""
    fs, path = filesystem(uri, storage_options)
    return fs.exists(path)


def remove_tree(uri: str, storage_options: StorageOptions = None) -> bool:
    """Delete a folder and everything in it; return whether there was one."""
    fs, path = filesystem(uri, storage_options)
    if not fs.exists(path):
        return False
    fs.rm(path, recursive=True)
    return True


def read_bytes(uri: str, storage_options: StorageOptions = None) -> bytes:
    """Read a whole file; errors name the file and the problem."""
    try:
        fs, path = filesystem(uri, storage_options)
        with fs.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as err:
        raise ImageReadError(f"{uri}: file not found") from err
    except Exception as err:  # noqa: BLE001 - any transport error becomes a named read error
        raise ImageReadError(f"{uri}: cannot read ({type(err).__name__}: {err})") from err


def _nifti_from_bytes(data: bytes, uri: str) -> nib.spatialimages.SpatialImage:
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise ImageReadError(f"{uri}: truncated or corrupt gzip stream ({err})") from err
    magic = data[344:348]
    if magic in _NIFTI1_MAGICS:
        image_class = nib.Nifti1Image
    elif data[4:8] in _NIFTI2_MAGICS or magic in _NIFTI2_MAGICS:
        image_class = nib.Nifti2Image
    else:
        raise ImageReadError(f"{uri}: not a NIfTI file (no NIfTI magic in the header)")
    try:
        image = image_class.from_bytes(data)
        np.asanyarray(image.dataobj)  # force the read so truncation shows here
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for bad files
        raise ImageReadError(f"{uri}: invalid NIfTI ({type(err).__name__}: {err})") from err
    return image


def _mha_from_bytes(data: bytes, uri: str) -> nib.Nifti1Image:
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "image.mha")
        with open(local, "wb") as handle:
            handle.write(data)
        try:
            image = sitk.ReadImage(local)
        except RuntimeError as err:
            raise ImageReadError(f"{uri}: invalid MetaImage ({err})") from err
    if image.GetDimension() != 3:
        raise ImageReadError(f"{uri}: {image.GetDimension()}D MetaImage; a 3D volume is required")
    array = sitk.GetArrayFromImage(image)  # (z, y, x) or (z, y, x, components)
    array = np.ascontiguousarray(np.moveaxis(array, (0, 1, 2), (2, 1, 0)))
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    lps_affine = np.eye(4)
    lps_affine[:3, :3] = direction * np.array(image.GetSpacing(), dtype=float)
    lps_affine[:3, 3] = image.GetOrigin()
    affine = _LPS_TO_RAS @ lps_affine
    nifti = nib.Nifti1Image(array, affine, dtype=array.dtype)  # int64 needs an explicit dtype
    nifti.set_qform(affine, code=1)
    nifti.set_sform(affine, code=1)
    return nifti


def read_image(uri: str, storage_options: StorageOptions = None) -> nib.spatialimages.SpatialImage:
    """Read a NIfTI (``.nii``, ``.nii.gz``) or MetaImage (``.mha``) file as a nibabel image."""
    data = read_bytes(uri, storage_options)
    if not data:
        raise ImageReadError(f"{uri}: empty file")
    if uri.lower().endswith(".mha"):
        return _mha_from_bytes(data, uri)
    return _nifti_from_bytes(data, uri)


def write_bytes_atomic(data: bytes, uri: str, storage_options: StorageOptions = None) -> None:
    """Write bytes to a temporary name beside ``uri``, then rename it into place."""
    fs, path = filesystem(uri, storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open(temporary, "wb") as handle:
            handle.write(data)
        fs.mv(temporary, path)
    except BaseException:
        if fs.exists(temporary):  # only a failed write leaves it (saves a request per file)
            fs.rm(temporary)
        raise


def image_like(data: np.ndarray, header: nib.Nifti1Header) -> nib.Nifti1Image:
    """A NIfTI image of ``data`` in the geometry of ``header`` (qform, sform and codes kept).

    A NIfTI-2 header gives a NIfTI-2 image, a NIfTI-1 header a NIfTI-1 image.
    """
    template = header.copy()
    template.set_data_dtype(data.dtype)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(data, None, header=template)
    image.set_qform(header.get_qform(), code=int(header["qform_code"]))
    image.set_sform(header.get_sform(), code=int(header["sform_code"]))
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"], image.header["cal_max"] = 0, 0
    return image


# gzip level of written images: masks are mostly zeros, and level 1 writes a 230×230×154 mask
# 3-5× faster than level 4 (~35 KB instead of ~8 KB): CPU time matters more than bytes here
NIFTI_GZIP_LEVEL = 1


def nifti_bytes(image: nib.Nifti1Image, *, compress: bool) -> bytes:
    """Serialise a NIfTI image; gzip it (with a fixed mtime) when ``compress``."""
    raw = image.to_bytes()
    if not compress:
        return raw
    buffer = io.BytesIO()
    with gzip.GzipFile(
        fileobj=buffer, mode="wb", compresslevel=NIFTI_GZIP_LEVEL, mtime=0
    ) as handle:
        handle.write(raw)
    return buffer.getvalue()


def write_nifti_atomic(
    image: nib.Nifti1Image, uri: str, storage_options: StorageOptions = None
) -> None:
    """Write a NIfTI image atomically; ``.nii.gz`` is compressed."""
    data = nifti_bytes(image, compress=uri.lower().endswith(".gz"))
    write_bytes_atomic(data, uri, storage_options)


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
