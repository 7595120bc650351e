"""One synthetic stroke head: anatomy, lesions by stage, look-alikes, MR signal per sequence.

A :class:`Phantom` holds every random draw of one head in world millimetres, so that it can be
rasterised on any axis-aligned grid (the case grid, a FLAIR grid of its own) and always shows
the same head. Contrast comes from tissue parameters (proton density, T1, T2, ADC) through
each sequence's signal equation, so relative intensities follow the physics: CSF dark on T1
and FLAIR and bright on T2; an ADC drop makes a lesion bright on DWI and dark on ADC; a long
T2 makes a lesion bright on FLAIR and T2 and, through T2 shine-through, on DWI.

What a head holds:

- anatomy (:mod:`.head`): a deformed, slightly rotated brain with folded cortex, deep grey
  matter and ventricles, as tissue fractions (borders have partial volume);
- labelled lesions (:mod:`.pathology`), each of one stage: ``hyperacute`` (ADC dark, DWI
  bright, nearly invisible on FLAIR and T2), ``acute`` (bright on DWI, FLAIR and T2),
  ``subacute`` (bright on DWI, FLAIR and T2, ADC pseudo-normalising); shaped (:mod:`.shapes`)
  as vascular-territory wedges (MCA, ACA, PCA), embolic cortical-subcortical blobs, and
  lacunes of a few millimetres in deep grey or white matter;
- look-alikes that are not lesion: white-matter hyperintensities (periventricular caps and
  rim, punctate and confluent deep WMH), an old infarct (T2 shine-through on DWI with a raised
  ADC, or a cavity), DWI susceptibility pile-up at the frontal and temporal base, N/2 ghosting,
  and incomplete CSF suppression (flow) on FLAIR;
- images (:mod:`.signal`): signal equations, bias field, Rician noise, thick-slice slabs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stroke_ray.phantom.grid import Grid, slab_mean
from stroke_ray.phantom.head import Anatomy, Head, Scene, draw_anatomy, draw_head, rasterise_anatomy
from stroke_ray.phantom.pathology import (
    STAGES,
    TRUTH_CODES,
    Artefacts,
    Pathology,
    Planner,
    apply_artefacts,
    apply_pathology,
    draw_artefacts,
    draw_lesions,
    draw_old_infarct,
    draw_white_matter_disease,
)
from stroke_ray.phantom.signal import SEQUENCE_NAMES, draw_protocol, render

__all__ = [
    "SEQUENCE_NAMES",
    "STAGES",
    "TRUTH_CODES",
    "Grid",
    "Phantom",
    "Scene",
    "draw_phantom",
    "rasterise",
    "render",
    "slab_mean",
]


@dataclass(frozen=True)
class Phantom:
    """Every random draw of one head; rasterise it on any axis-aligned grid."""

    head: Head
    anatomy: Anatomy
    pathologies: tuple[Pathology, ...]
    artefacts: Artefacts
    timing_ms: dict[str, tuple[float, float, float]]
    wm_level: dict[str, float]

    @property
    def stages(self) -> list[str]:
        """The stage of each labelled lesion."""
        return [p.kind for p in self.pathologies if p.labelled]


def draw_phantom(
    rng: np.random.Generator, grid: Grid, *, lesion_count: int
) -> tuple[Phantom, Scene]:
    """Draw a head with ``lesion_count`` labelled lesions; return it and its scene on ``grid``.

    ``grid`` sets the field of view (the head fills it like a clinical scan) and serves to
    place lesions in tissue and apart from each other.
    """
    head = draw_head(rng, grid)
    anatomy = draw_anatomy(rng, grid)
    scene = rasterise_anatomy(head, anatomy, grid)
    planner = Planner(rng, scene, head)
    pathologies = draw_lesions(rng, planner, head, lesion_count)
    pathologies += draw_old_infarct(rng, planner, head)
    for wmh in draw_white_matter_disease(rng, planner, head, anatomy):
        apply_pathology(scene, head, wmh)
        pathologies.append(wmh)
    artefacts = draw_artefacts(rng)
    apply_artefacts(scene, head, artefacts)
    timing, wm_level = draw_protocol(rng)
    phantom = Phantom(head, anatomy, tuple(pathologies), artefacts, timing, wm_level)
    return phantom, scene


def rasterise(phantom: Phantom, grid: Grid) -> Scene:
    """The phantom on ``grid`` (every pathology and artefact included)."""
    scene = rasterise_anatomy(phantom.head, phantom.anatomy, grid)
    for pathology in phantom.pathologies:
        apply_pathology(scene, phantom.head, pathology)
    apply_artefacts(scene, phantom.head, phantom.artefacts)
    return scene
