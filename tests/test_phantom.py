"""Tests of the synthetic stroke head: anatomy, lesion stages, look-alikes, grids."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np
import pytest
from scipy import ndimage

from stroke_ray import phantom as ph

SHAPE = (64, 64, 48)
SPACING_MM = 3.0
GRID = ph.Grid.centred(SHAPE, SPACING_MM)
NO_ARTEFACTS = ph._Artefacts((), (), 0.0, 0.0, None)


@lru_cache
def _drawn(seed: int, lesion_count: int = 2) -> tuple[ph.Phantom, ph.Scene]:
    return ph.draw_phantom(np.random.default_rng(seed), GRID, lesion_count=lesion_count)


def _render(phantom: ph.Phantom) -> dict[str, np.ndarray]:
    """Every sequence with one noise seed (same bias and noise whatever the pathology)."""
    return ph.render(phantom, ph.rasterise(phantom, GRID), ph.SEQUENCE_NAMES, seed=1)


def _normal_only(phantom: ph.Phantom) -> ph.Phantom:
    return replace(phantom, pathologies=(), artefacts=NO_ARTEFACTS)


def _with_stage(phantom: ph.Phantom, stage: str) -> ph.Phantom:
    """The phantom's labelled lesions only, all of ``stage`` at its mid-range tissue change."""
    change = np.log([np.mean(bounds) for bounds in ph._CHANGE[stage]])
    lesions = [replace(p, kind=stage, log_change=change) for p in phantom.pathologies if p.labelled]
    return replace(_normal_only(phantom), pathologies=tuple(lesions))


def test_tissue_ordering_per_sequence() -> None:
    phantom, scene = _drawn(11)
    images = _render(_normal_only(phantom))
    tissue = scene.full(np.argmax(scene.fractions, axis=0))
    pure = scene.full(scene.brain & (scene.fractions.max(axis=0) > 0.8))
    means = {
        seq: [images[seq][pure & (tissue == t)].mean() for t in range(3)]  # CSF, GM, WM
        for seq in ph.SEQUENCE_NAMES
    }
    csf, gm, wm = means["t1"]
    assert wm > gm > csf
    csf, gm, wm = means["t2"]
    assert csf > gm > wm
    csf, gm, wm = means["flair"]
    assert gm > wm > csf
    csf, gm, wm = means["dwi"]  # b1000: grey and white matter nearly alike, CSF dark
    assert max(gm, wm) / min(gm, wm) < 1.6 and csf < 0.7 * wm
    csf, gm, wm = means["adc"]
    assert csf > 2.5 * wm and gm > wm
    assert 600 < wm < 900  # 10^-6 mm²/s


@pytest.mark.parametrize("seed", [5, 9])
def test_lesion_contrast_per_stage(seed: int) -> None:
    phantom, _ = _drawn(seed)
    normal = _render(_normal_only(phantom))
    ratio = {}
    for stage in ph.STAGES:
        images = _render(_with_stage(phantom, stage))
        lesion = images["label"] == 1
        assert lesion.any()
        ratio[stage] = {
            seq: images[seq][lesion].mean() / normal[seq][lesion].mean()
            for seq in ph.SEQUENCE_NAMES
        }
    # Hyperacute: ADC darker and DWI brighter than the same tissue; nearly invisible elsewhere.
    hyper = ratio["hyperacute"]
    assert hyper["adc"] < 0.8 and hyper["dwi"] > 1.3
    assert hyper["flair"] < 1.1 and hyper["t2"] < 1.1 and abs(hyper["t1"] - 1) < 0.05
    # Acute: bright on DWI, FLAIR and T2, dark on ADC.
    acute = ratio["acute"]
    assert acute["adc"] < 0.75 and acute["dwi"] > 1.5
    assert acute["flair"] > 1.15 and acute["t2"] > 1.15
    # Subacute: brighter still on FLAIR and T2, dark on T1, ADC pseudo-normalising.
    subacute = ratio["subacute"]
    assert 0.8 < subacute["adc"] < 1.0 and subacute["dwi"] > 1.3
    assert subacute["flair"] > acute["flair"] and subacute["t2"] > acute["t2"]
    assert subacute["t1"] < 0.93


def _normal_wm_median(images: dict[str, np.ndarray], scene: ph.Scene, seq: str) -> float:
    wm = scene.full((scene.fractions[2] > 0.9) & (scene.truth == 0))
    return float(np.median(images[seq][wm]))


@pytest.mark.parametrize("seed", [0, 3, 4, 7])
def test_lookalikes_are_bright_but_not_labelled(seed: int) -> None:
    phantom, scene = _drawn(seed)
    images = _render(phantom)
    truth = scene.full(scene.truth)
    label = images["label"] == 1
    wm = {seq: _normal_wm_median(images, scene, seq) for seq in ("flair", "dwi", "adc")}
    found = set()
    for kind in ("wmh", "old", "dwi_artefact"):
        where = truth == ph.TRUTH_CODES[kind]
        if not where.any():
            continue
        found.add(kind)
        assert not (where & label).any(), kind
        mean = {seq: images[seq][where].mean() / wm[seq] for seq in wm}
        if kind == "wmh":  # FLAIR-bright white matter, ADC not low
            assert mean["flair"] > 1.1 and mean["adc"] > 1.0
        elif kind == "old":  # ADC raised; T2 shine-through on DWI unless it is a cavity
            assert mean["adc"] > 1.1 and mean["flair"] > 1.1
            (old,) = [p for p in phantom.pathologies if p.kind == "old"]
            if old.cavity < 0.5:
                assert mean["dwi"] > 1.2
        else:  # DWI susceptibility pile-up: bright on DWI, ADC not low
            assert mean["dwi"] > 1.3 and mean["adc"] > 0.85
    assert found & {"wmh", "old"}


def test_lookalikes_appear_across_cases() -> None:
    kinds = set()
    for seed in range(8):
        phantom, scene = _drawn(seed)
        kinds |= {p.kind for p in phantom.pathologies}
        kinds |= {name for name, code in ph.TRUTH_CODES.items() if (scene.truth == code).any()}
        if phantom.artefacts.ghost:
            kinds.add("ghost")
        if phantom.artefacts.flow:
            kinds.add("flow")
    assert {"wmh", "old", "dwi_artefact", "ghost", "flow", *ph.STAGES} <= kinds


def test_lacunes_beside_territorial_lesions() -> None:
    voxel_ml = SPACING_MM**3 / 1000
    volumes, shapes = [], set()
    for seed in range(12):
        phantom, scene = _drawn(seed, 3)
        shapes |= {type(p.shape).__name__ for p in phantom.pathologies if p.labelled}
        labels, count = ndimage.label(scene.label)
        volumes += list(np.bincount(labels.ravel())[1:] * voxel_ml)
    assert {"_Wedge", "_Ellipsoids"} <= shapes
    assert min(volumes) < 0.5 and max(volumes) > 20


def test_lesion_borders_have_partial_volume() -> None:
    phantom, scene = _drawn(5)
    change = -scene.log_change[3]  # ADC drop
    near = ndimage.binary_dilation(scene.label, iterations=2) & ~ndimage.binary_erosion(
        scene.label, iterations=1
    )
    peak = change[scene.label].max()
    partial = (change[near] > 0.1 * peak) & (change[near] < 0.9 * peak)
    assert partial.mean() > 0.3


def test_the_head_is_the_same_on_a_shifted_grid() -> None:
    phantom, scene = _drawn(5)
    moved = ph.rasterise(phantom, GRID.moved((SPACING_MM, 0.0, 0.0)))
    # Voxel i of the moved grid sits where voxel i + 1 of the original does.
    original = scene.full(scene.fractions[1])
    shifted = moved.full(moved.fractions[1])
    np.testing.assert_allclose(shifted[:-1], original[1:], atol=1e-4)
    np.testing.assert_array_equal(moved.full(moved.label)[:-1], scene.full(scene.label)[1:])


def test_slab_grid_and_mean() -> None:
    grid = ph.Grid.centred((4, 4, 11), 2.0)
    slabs, start = grid.slabs(3)
    assert (slabs.shape, slabs.spacing_mm, start) == ((4, 4, 3), (2.0, 2.0, 6.0), 1)
    z = grid.axes_mm()[2]
    np.testing.assert_allclose(slabs.axes_mm()[2], z[1:10].reshape(3, 3).mean(axis=1))
    volume = np.broadcast_to(np.arange(11, dtype=np.float32), (4, 4, 11))
    np.testing.assert_allclose(ph.slab_mean(volume, 3, start)[0, 0], [2.0, 5.0, 8.0])


def test_unknown_sequence_is_refused() -> None:
    phantom, scene = _drawn(5)
    with pytest.raises(ValueError, match="unknown sequences"):
        ph.render(phantom, scene, ("dwi", "swi"), seed=0)
