"""The paired fused − plane comparison of benchmarks/accuracy_table.py."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks.accuracy_table import paired_differences


def _rows(fold_of_case: dict[str, int]) -> pd.DataFrame:
    rows = []
    for index, (case_id, fold) in enumerate(fold_of_case.items()):
        plane_dice = 0.5 + 0.01 * index
        fused = {0: plane_dice + 0.1, 1: plane_dice, 2: plane_dice - 0.05}[index % 3]
        for source, dice in (("axial", plane_dice), ("fused_soft", fused)):
            rows.append({"arm": "a", "fold": fold, "case_id": case_id, "source": source,
                         "dice": dice, "lesion_f1": 1.0})  # fmt: skip
    return pd.DataFrame(rows)


def test_paired_differences_count_wins_ties_losses_and_bound_the_mean():
    # the same case id in two folds is two cases
    rows = _rows({f"c{i}": i % 2 for i in range(6)})
    rows.loc[rows["case_id"] == "c5", "case_id"] = "c4"  # c4 in fold 0, "c4" in fold 1
    paired = paired_differences(rows).set_index("metric")
    dice = paired.loc["dice"]
    assert (dice.fused, dice.plane, dice.cases) == ("fused_soft", "axial", 6)
    assert (dice.wins, dice.ties, dice.losses) == (2, 2, 2)
    assert dice.mean_diff == pytest.approx((2 * 0.1 - 2 * 0.05) / 6)
    assert dice.ci_low <= dice.mean_diff <= dice.ci_high and dice.ci_low < dice.ci_high
    f1 = paired.loc["lesion_f1"]
    assert f1.ties == 6 and f1.mean_diff == f1.ci_low == f1.ci_high == 0.0
