"""Tests for stroke_ray.splits: case-level train/validation splits and K folds."""

from __future__ import annotations

import pytest

from stroke_ray.splits import kfold_cases, split_cases

CASES = [f"case{i:02d}" for i in range(17)]


@pytest.mark.parametrize("n, fraction", [(17, 0.2), (2, 0.5), (2, 0.01), (3, 0.99), (10, 0.3)])
def test_split_disjoint_complete_non_empty(n: int, fraction: float) -> None:
    ids = CASES[:n]
    split = split_cases(ids, fraction, seed=0)
    assert set(split) == {"train", "val"}
    train, val = set(split["train"]), set(split["val"])
    assert not train & val
    assert train | val == set(ids)
    assert len(split["train"]) + len(split["val"]) == n
    assert train and val
    expected_val = min(max(round(fraction * n), 1), n - 1)
    assert len(val) == expected_val


def test_split_deterministic_per_seed_and_order_free() -> None:
    first = split_cases(CASES, 0.3, seed=4)
    assert split_cases(list(reversed(CASES)), 0.3, seed=4) == first
    assert split_cases(tuple(CASES), 0.3, seed=4) == first
    others = [split_cases(CASES, 0.3, seed=seed)["val"] for seed in range(5, 10)]
    assert any(val != first["val"] for val in others)


@pytest.mark.parametrize(
    "ids, fraction, message",
    [
        (["only"], 0.5, "at least 2 cases"),
        ([], 0.5, "at least 2 cases"),
        (CASES, 0.0, "between 0 and 1"),
        (CASES, 1.0, "between 0 and 1"),
        (CASES, -0.2, "between 0 and 1"),
        (["a", "b", "a"], 0.5, r"duplicate case ids \['a'\]"),
    ],
)
def test_split_errors(ids: list[str], fraction: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_cases(ids, fraction, seed=0)


@pytest.mark.parametrize("n, folds", [(17, 5), (4, 4), (5, 2), (10, 3)])
def test_kfold_each_case_tested_once(n: int, folds: int) -> None:
    ids = CASES[:n]
    result = kfold_cases(ids, folds, seed=1)
    assert len(result) == folds
    tested = [case for fold in result for case in fold["test"]]
    assert sorted(tested) == sorted(ids)
    for fold in result:
        assert not set(fold["train"]) & set(fold["test"])
        assert set(fold["train"]) | set(fold["test"]) == set(ids)
        assert fold["test"]
    sizes = [len(fold["test"]) for fold in result]
    assert max(sizes) - min(sizes) <= 1


def test_kfold_deterministic_per_seed() -> None:
    assert kfold_cases(CASES, 4, seed=2) == kfold_cases(list(reversed(CASES)), 4, seed=2)
    others = [kfold_cases(CASES, 4, seed=seed) for seed in range(3, 8)]
    assert any(other != kfold_cases(CASES, 4, seed=2) for other in others)


@pytest.mark.parametrize("folds", [1, 0, len(CASES) + 1])
def test_kfold_fold_count_checked(folds: int) -> None:
    with pytest.raises(ValueError, match="folds must be between 2"):
        kfold_cases(CASES, folds, seed=0)


def test_kfold_duplicates_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate case ids"):
        kfold_cases(["a", "b", "c", "b"], 2, seed=0)
