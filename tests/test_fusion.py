"""Tests for stroke_ray.fusion: one tie rule for every vote (more than half, exactly half is
background), weighted votes and their fallback, the soft threshold."""

from __future__ import annotations

import numpy as np
import pytest

from stroke_ray.config import PLANES
from stroke_ray.fusion import THRESHOLD, fuse, probability_spread, vote_count

ON, OFF = 0.9, 0.1
# Every combination of three plane votes, one voxel each: (axial, coronal, sagittal).
PATTERNS = [(a, c, s) for a in (0, 1) for c in (0, 1) for s in (0, 1)]


def _planes(*columns: list[float], planes: tuple[str, ...] = PLANES) -> dict[str, np.ndarray]:
    """Plane probability volumes (1×1×N) from one list of per-voxel values per plane."""
    return {
        plane: np.asarray(values, dtype=np.float32).reshape(1, 1, -1)
        for plane, values in zip(planes, columns, strict=True)
    }


def _votes(patterns: list[tuple[int, ...]], planes: tuple[str, ...] = PLANES):
    """Probabilities voting as ``patterns`` says (one voxel per pattern)."""
    columns = [[ON if p[i] else OFF for p in patterns] for i in range(len(planes))]
    return _planes(*columns, planes=planes)


def test_majority_is_two_of_three():
    fused = fuse(_votes(PATTERNS), "majority")
    assert fused.dtype == np.uint8
    np.testing.assert_array_equal(fused.ravel(), [int(sum(p) >= 2) for p in PATTERNS])


def test_two_planes_need_both():
    patterns = [(0, 0), (1, 0), (0, 1), (1, 1)]
    probabilities = _votes(patterns, planes=("axial", "coronal"))
    np.testing.assert_array_equal(fuse(probabilities, "majority").ravel(), [0, 0, 0, 1])
    # weighted with equal weights follows the same rule: one of two is a tie, so background
    np.testing.assert_array_equal(
        fuse(probabilities, "weighted", {"axial": 0.7, "coronal": 0.7}).ravel(), [0, 0, 0, 1]
    )


def test_a_vote_is_probability_at_least_one_half():
    probabilities = _planes([0.5, 0.4999], [0.5, 0.4999], [0.0, 1.0])
    np.testing.assert_array_equal(vote_count(probabilities).ravel(), [2, 1])
    np.testing.assert_array_equal(fuse(probabilities, "majority").ravel(), [1, 0])
    assert THRESHOLD == 0.5


def test_weighted_tie_is_background():
    """(0.5, 0.25, 0.25): the first plane alone is exactly half the weight, so background."""
    weights = {"axial": 0.5, "coronal": 0.25, "sagittal": 0.25}
    fused = fuse(_votes(PATTERNS), "weighted", weights).ravel()
    expected = {
        (0, 0, 0): 0,
        (1, 0, 0): 0,  # 0.5 of 1.0: a tie
        (0, 1, 1): 0,  # 0.25 + 0.25: a tie too
        (0, 1, 0): 0,
        (0, 0, 1): 0,
        (1, 1, 0): 1,
        (1, 0, 1): 1,
        (1, 1, 1): 1,
    }
    np.testing.assert_array_equal(fused, [expected[p] for p in PATTERNS])


def test_weighted_tie_survives_floating_point_sums():
    """0.1 + 0.05 is not 0.15 in floating point: a tie of such weights must still be a tie."""
    weights = {"axial": 0.1, "coronal": 0.15, "sagittal": 0.05}
    assert 2 * (0.1 + 0.05) > 0.1 + 0.15 + 0.05  # the naive comparison would call it lesion
    fused = fuse(_votes([(1, 0, 1), (0, 1, 0)]), "weighted", weights).ravel()
    np.testing.assert_array_equal(fused, [0, 0])


def test_weighted_heavy_plane_outvotes_the_others():
    weights = {"axial": 0.6, "coronal": 0.2, "sagittal": 0.2}
    fused = fuse(_votes([(1, 0, 0), (0, 1, 1)]), "weighted", weights).ravel()
    np.testing.assert_array_equal(fused, [1, 0])


@pytest.mark.parametrize(
    "weights",
    [
        None,
        {"axial": 0.0, "coronal": 0.0, "sagittal": 0.0},
        {"axial": -1.0, "coronal": -0.5, "sagittal": -2.0},
        {"axial": -1.0, "coronal": 0.0, "sagittal": 0.0},
    ],
    ids=["none", "all_zero", "all_negative", "negative_and_zero"],
)
def test_weighted_falls_back_to_equal_weights(weights):
    probabilities = _votes(PATTERNS)
    fused = fuse(probabilities, "weighted", weights)
    np.testing.assert_array_equal(fused, fuse(probabilities, "majority"))
    # the fallback is really equal weights: one plane is never enough, two always are
    np.testing.assert_array_equal(fused.ravel(), [int(sum(p) >= 2) for p in PATTERNS])


def test_weighted_negative_weight_counts_as_zero():
    """(1, -5, 1): coronal has no say, so axial and sagittal must agree."""
    weights = {"axial": 1.0, "coronal": -5.0, "sagittal": 1.0}
    fused = fuse(_votes(PATTERNS), "weighted", weights).ravel()
    np.testing.assert_array_equal(fused, [int(p[0] and p[2]) for p in PATTERNS])


def test_soft_threshold_is_mean_at_least_one_half():
    probabilities = _planes(
        [0.25, 0.25, 0.0, 1.0],
        [0.5, 0.5, 0.0, 0.2],
        [0.75, 0.74, 1.0, 0.2],
    )
    # means: exactly 0.5 (lesion), just under 0.5, 1/3, 0.4667
    np.testing.assert_array_equal(fuse(probabilities, "soft").ravel(), [1, 0, 0, 0])
    # soft differs from voting: the first voxel has 2 votes of 3, the third and fourth one
    np.testing.assert_array_equal(fuse(probabilities, "majority").ravel(), [1, 1, 0, 0])


def test_float32_just_below_one_half_stays_background():
    """0.49995 in float32 is no vote; rounded to float16 it would become 0.5, a vote."""
    value = np.float32(0.49995)
    assert np.float16(value) == 0.5  # why predictions stay float32 up to the vote
    probabilities = _planes([value, value], [value, value], [value, 0.0])
    for mode in ("majority", "weighted", "soft"):
        assert not fuse(probabilities, mode).any(), mode
    assert not vote_count(probabilities).any()
    rounded = {plane: p.astype(np.float16) for plane, p in probabilities.items()}
    assert fuse(rounded, "majority").all()


def test_probability_spread():
    probabilities = _planes([0.1, 0.5], [0.9, 0.5], [0.3, 0.5])
    np.testing.assert_allclose(probability_spread(probabilities).ravel(), [0.8, 0.0], atol=1e-6)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown fusion mode 'mean'"):
        fuse(_votes(PATTERNS), "mean")


# --------------------------------------------------------------------------- minimum lesion size


def test_min_lesion_voxels_rounds_up_to_the_volume():
    from stroke_ray.fusion import min_lesion_voxels

    assert min_lesion_voxels(0.0, (1, 1, 1)) == 0
    assert min_lesion_voxels(None, (1, 1, 1)) == 0
    assert min_lesion_voxels(0.01, (1, 1, 1)) == 10  # 10 voxels of 1 µl are 0.01 ml: kept
    assert min_lesion_voxels(0.0105, (1, 1, 1)) == 11
    assert min_lesion_voxels(0.04, (1, 2, 5)) == 4


def test_remove_small_lesions_uses_26_connectivity_and_ml():
    from stroke_ray.fusion import remove_small_lesions

    mask = np.zeros((12, 12, 12), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 2] = 1  # two voxels touching by a corner: one lesion of 2
    mask[6:8, 6:8, 6:8] = 1  # 8 voxels
    spacing = (1.0, 1.0, 2.0)  # 2 µl per voxel
    np.testing.assert_array_equal(remove_small_lesions(mask, 0.0, spacing), mask)
    np.testing.assert_array_equal(remove_small_lesions(mask, 0.004, spacing), mask)  # 2 voxels
    kept = remove_small_lesions(mask, 0.005, spacing)  # 3 voxels needed
    assert kept.dtype == np.uint8 and int(kept.sum()) == 8 and kept[6:8, 6:8, 6:8].all()
    assert not remove_small_lesions(mask, 0.017, spacing).any()  # 9 voxels needed
    assert not remove_small_lesions(np.zeros_like(mask), 1.0, spacing).any()


@pytest.mark.parametrize("seed", range(4))
def test_remove_small_lesions_in_the_box_equals_the_whole_volume(seed):
    import cc3d

    from stroke_ray.fusion import remove_small_lesions

    rng = np.random.default_rng(seed)
    mask = np.zeros((20, 24, 16), np.uint8)
    low, high = rng.integers(0, 6, 3), rng.integers(14, 17, 3)  # lesions reach the array's edges
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    mask[box] = rng.random(mask[box].shape) < 0.08
    whole = cc3d.dust(mask, threshold=5, connectivity=26, binary_image=True)
    kept = remove_small_lesions(mask, 0.005, (1.0, 1.0, 1.0))
    assert kept.dtype == np.uint8 and 0 < kept.sum() < mask.sum()
    np.testing.assert_array_equal(kept, whole.astype(np.uint8))
