"""Tests for stroke_ray.io: NIfTI/MHA reading, error messages and atomic writes."""

from __future__ import annotations

import gzip
from pathlib import Path

import fsspec.implementations.local
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import affine_for, rotation, save_nifti

from stroke_ray.io import (
    ImageReadError,
    exists,
    join_uri,
    nifti_bytes,
    read_bytes,
    read_image,
    write_bytes_atomic,
    write_nifti_atomic,
)


def _volume(shape: tuple[int, int, int] = (6, 7, 5), seed: int = 0) -> np.ndarray:
    """Return a small float32 volume with distinct values."""
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _nifti_file(tmp_path: Path, name: str) -> tuple[Path, np.ndarray, np.ndarray]:
    """Write a NIfTI with nibabel; return its path, data and affine."""
    data = _volume()
    affine = rotation(2, 17.0) @ affine_for("LPS", (0.9, 1.1, 2.5))
    return save_nifti(data, affine, tmp_path / name), data, affine


@pytest.mark.parametrize("name", ["image.nii", "image.nii.gz", "IMAGE.NII.GZ"])
def test_read_nifti(tmp_path: Path, name: str) -> None:
    path, data, affine = _nifti_file(tmp_path, name)
    image = read_image(str(path))
    np.testing.assert_array_equal(np.asarray(image.dataobj), data)
    np.testing.assert_allclose(image.affine, affine, atol=1e-5)


def test_read_nifti2(tmp_path: Path) -> None:
    data = _volume()
    path = tmp_path / "image2.nii"
    nib.save(nib.Nifti2Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    image = read_image(str(path))
    assert isinstance(image, nib.Nifti2Image)
    np.testing.assert_array_equal(np.asarray(image.dataobj), data)


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.int64])
def test_read_mha_matches_itk_geometry(tmp_path: Path, dtype: type) -> None:
    array_zyx = (_volume((5, 7, 6)) * 100).astype(dtype)
    itk_image = sitk.GetImageFromArray(array_zyx)
    itk_image.SetSpacing((0.8, 1.3, 2.2))
    itk_image.SetOrigin((12.0, -7.5, 30.0))
    direction = rotation(0, 25.0)[:3, :3] @ rotation(2, -40.0)[:3, :3] @ np.diag([1, -1, 1])
    itk_image.SetDirection(tuple(direction.ravel()))
    path = tmp_path / "image.mha"
    sitk.WriteImage(itk_image, str(path))

    image = read_image(str(path))

    np.testing.assert_array_equal(np.asarray(image.dataobj), sitk.GetArrayFromImage(itk_image).T)
    assert np.asarray(image.dataobj).dtype == dtype
    for index in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (5, 6, 4)]:
        lps = np.array(itk_image.TransformIndexToPhysicalPoint(index))
        ras = lps * np.array([-1.0, -1.0, 1.0])
        np.testing.assert_allclose(image.affine @ np.array([*index, 1.0]), [*ras, 1.0], atol=1e-9)


def test_read_mha_2d_refused(tmp_path: Path) -> None:
    path = tmp_path / "slice.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 5), np.float32)), str(path))
    with pytest.raises(ImageReadError, match=r"slice\.mha.*2D"):
        read_image(str(path))


def test_truncated_gz_names_file(tmp_path: Path) -> None:
    path, _, _ = _nifti_file(tmp_path, "cut.nii.gz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageReadError, match=r"cut\.nii\.gz.*truncated"):
        read_image(str(path))


def test_corrupt_deflate_stream_names_file(tmp_path: Path) -> None:
    path, _, _ = _nifti_file(tmp_path, "bad.nii.gz")
    data = bytearray(path.read_bytes())
    data[20:60] = b"\xff" * 40
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"bad\.nii\.gz"):
        read_image(str(path))


def test_truncated_uncompressed_names_file(tmp_path: Path) -> None:
    path, _, _ = _nifti_file(tmp_path, "cut.nii")
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(ImageReadError, match=r"cut\.nii"):
        read_image(str(path))


@pytest.mark.parametrize("name", ["noise.nii", "noise.nii.gz", "noise.mha"])
def test_random_bytes_name_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).bytes(2000))
    with pytest.raises(ImageReadError) as caught:
        read_image(str(path))
    assert str(path) in str(caught.value)


def test_gzip_of_non_nifti_refused(tmp_path: Path) -> None:
    path = tmp_path / "text.nii.gz"
    path.write_bytes(gzip.compress(b"hello world" * 100))
    with pytest.raises(ImageReadError, match=r"text\.nii\.gz.*not a NIfTI"):
        read_image(str(path))


def test_missing_and_empty_files(tmp_path: Path) -> None:
    missing = tmp_path / "absent.nii.gz"
    with pytest.raises(ImageReadError, match=r"absent\.nii\.gz: file not found"):
        read_image(str(missing))
    with pytest.raises(ImageReadError, match="file not found"):
        read_bytes(str(missing))
    empty = tmp_path / "empty.nii"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.nii: empty file"):
        read_image(str(empty))


def test_write_bytes_atomic_overwrites_without_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "deeper" / "folder" / "blob.bin"
    write_bytes_atomic(b"first", str(target))
    write_bytes_atomic(b"second version", str(target))
    assert target.read_bytes() == b"second version"
    assert sorted(p.name for p in target.parent.iterdir()) == ["blob.bin"]
    assert exists(str(target)) and not exists(str(tmp_path / "other.bin"))


def test_write_bytes_atomic_failure_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "blob.bin"
    target.write_bytes(b"old")

    def failing_move(*args: object, **kwargs: object) -> None:
        """Simulate a crash between writing the temporary file and renaming it."""
        raise OSError("disk gone")

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "mv", failing_move)
    with pytest.raises(OSError, match="disk gone"):
        write_bytes_atomic(b"new", str(target))
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["blob.bin"]


@pytest.mark.parametrize("name", ["out.nii", "out.nii.gz"])
def test_write_nifti_atomic_round_trip(tmp_path: Path, name: str) -> None:
    data = (_volume() * 50).astype(np.int16)
    affine = affine_for("PSL", (1.0, 0.5, 3.0))
    target = tmp_path / name
    write_nifti_atomic(nib.Nifti1Image(data, affine), str(target))
    assert (target.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    loaded = nib.load(str(target))
    np.testing.assert_array_equal(np.asarray(loaded.dataobj), data)
    np.testing.assert_allclose(loaded.affine, affine)
    np.testing.assert_array_equal(np.asarray(read_image(str(target)).dataobj), data)


def test_nifti_bytes_gzip_is_deterministic() -> None:
    image = nib.Nifti1Image(_volume(), np.eye(4))
    first, second = nifti_bytes(image, compress=True), nifti_bytes(image, compress=True)
    assert first == second
    assert gzip.decompress(first) == nifti_bytes(image, compress=False)


def test_join_uri() -> None:
    assert (
        join_uri("s3://bucket/root/", "/case1/", "t1.nii.gz") == "s3://bucket/root/case1/t1.nii.gz"
    )
    assert join_uri("/data", "x") == "/data/x"
