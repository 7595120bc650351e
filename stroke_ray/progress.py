"""CLI-edge progress and summaries: a case progress bar (quiet in logs) and the summary table."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

from tqdm import tqdm

__all__ = ["case_progress", "print_summary", "summary_table"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def case_progress() -> Iterator[Callable[[dict[str, Any]], None]]:
    """A callback per finished case: a tqdm bar on a terminal, a log line otherwise."""
    interactive = sys.stderr.isatty()
    bar = tqdm(unit="case", desc="segmenting", disable=not interactive)
    counts = {"ok": 0, "unlabelled": 0, "error": 0}

    def update(result: dict[str, Any]) -> None:
        counts[result["status"]] = counts.get(result["status"], 0) + 1
        bar.update(1)
        bar.set_postfix(counts)
        if not interactive:
            logger.info(
                "case %s: %s (%.1f s)", result["case_id"], result["status"], result["seconds"]
            )

    try:
        yield update
    finally:
        bar.close()


def summary_table(summary: dict[str, Any]) -> str:
    """The cohort summary as a plain-text table."""
    lines = [f"{'source':>9} {'cases':>5} {'Dice mean':>9} {'median':>7} {'pooled':>7}"]
    for source in ("axial", "coronal", "sagittal", "fused"):
        values = summary["sources"].get(source)
        if values:
            lines.append(
                f"{source:>9} {values['cases']:>5} {values['dice_mean']:>9.4f} "
                f"{values['dice_median']:>7.4f} {values['dice_pooled']:>7.4f}"
            )
    counts = summary["status_counts"]
    lines.append(
        f"cases: {summary['cases']} ({counts['ok']} ok, {counts['unlabelled']} unlabelled, "
        f"{counts['error']} errors)"
    )
    lines.extend(f"  error: {message}" for message in summary.get("errors", {}).values())
    return "\n".join(lines)


def print_summary(summary: dict[str, Any]) -> None:
    """Print the summary table to stdout."""
    print(summary_table(summary))
