"""What defines a run or output folder, and the refusal to mix two definitions in one folder.

A training run records the options that shape its models and its case split; a segmentation
folder records the run and the fusion settings its masks come from. A rerun into the same
folder resumes only when it asks for the same thing; otherwise it stops before any work and
names what differs (``--restart`` / ``--overwrite`` replace the folder instead).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["DefinitionMismatchError", "differences", "ensure_same_definition"]


class DefinitionMismatchError(ValueError):
    """A folder holds results of another definition than the one asked for."""


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def differences(recorded: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """One line per key whose value differs: ``key: recorded -> requested``."""
    normalise = lambda value: json.loads(json.dumps(value, sort_keys=True, default=str))  # noqa: E731
    lines = []
    for key in sorted(set(recorded) | set(requested)):
        old, new = normalise(recorded.get(key)), normalise(requested.get(key))
        if old != new:
            lines.append(f"{key}: {_shown(old)} -> {_shown(new)}")
    return lines


def ensure_same_definition(
    folder: str,
    recorded: Mapping[str, Any] | None,
    requested: Mapping[str, Any],
    replace_option: str,
) -> None:
    """Raise DefinitionMismatchError naming each difference, unless there is none."""
    if recorded is None:
        raise DefinitionMismatchError(
            f"{folder} holds results without a recorded definition (an older stroke-ray or "
            f"another tool); rerun with {replace_option} to replace them, or choose another folder"
        )
    lines = differences(recorded, requested)
    if lines:
        raise DefinitionMismatchError(
            f"{folder} holds results of another definition; it differs in "
            + "; ".join(lines)
            + f". Rerun with {replace_option} to replace them, or choose another folder."
        )
