"""One case of a cohort: its id, a file per sequence, an optional label, and where it came from.

Sequence names are lower case (``t1``, ``t2``, ``flair``, ``dwi``, ``adc``, …): every layout
maps its own names onto them with :func:`sequence_name`. Case ids name output files, so they
must match ``[A-Za-z0-9][A-Za-z0-9._-]*`` without ``..`` (:func:`check_case_id`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Case", "ManifestError", "check_case_id", "sequence_name", "IMAGE_PREFIX"]

IMAGE_PREFIX = "image_"  # a sequence's key in a case's flat dict (Ray rows)
_CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SEQUENCE_PATTERN = re.compile(r"^[a-z0-9]+$")
_ALIASES = {"t1w": "t1", "t2w": "t2"}  # BIDS suffixes and nnU-Net channel names


class ManifestError(ValueError):
    """A cohort itself is invalid (before any case is read)."""


@dataclass(frozen=True)
class Case:
    """One case: resolved URIs of its sequences (by name), optional label and BIDS origin."""

    case_id: str
    images: Mapping[str, str]
    label: str | None = None
    problem: str | None = None  # why the case cannot be read (found while listing the cohort)
    subject: str | None = None
    session: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", dict(self.images))

    def to_dict(self) -> dict[str, str | None]:
        """Flat, JSON-friendly form (Ray rows): ``image_<sequence>`` holds each sequence."""
        images = {f"{IMAGE_PREFIX}{name}": uri for name, uri in self.images.items()}
        return {
            "case_id": self.case_id, **images, "label": self.label, "problem": self.problem,
            "subject": self.subject, "session": self.session,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Case:
        """Inverse of :meth:`to_dict` (other keys of a row are ignored)."""
        images = {
            key.removeprefix(IMAGE_PREFIX): uri
            for key, uri in values.items()
            if key.startswith(IMAGE_PREFIX) and uri
        }
        optional = {
            key: values.get(key) or None for key in ("label", "problem", "subject", "session")
        }
        return cls(case_id=values["case_id"], images=images, **optional)


def check_case_id(case_id: str) -> None:
    """Raise ManifestError unless ``case_id`` can name output files."""
    if not _CASE_ID_PATTERN.fullmatch(case_id) or ".." in case_id:
        raise ManifestError(
            f"case id {case_id!r} is not allowed: use letters, digits, '.', '_' or '-' "
            "(no '/', '..', NUL or leading punctuation), since it names output files"
        )


def sequence_name(name: str) -> str:
    """Our name of a sequence: lower case, ``T1w``/``T1`` → ``t1``, ``T2w``/``T2`` → ``t2``.

    Raise ValueError for a name that is not letters and digits.
    """
    lowered = name.strip().lower()
    lowered = _ALIASES.get(lowered, lowered)
    if not _SEQUENCE_PATTERN.fullmatch(lowered):
        raise ValueError(f"{name!r} is not a sequence name (letters and digits only)")
    return lowered
