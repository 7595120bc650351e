"""MR signal: tissue parameters through each sequence's signal equation, bias, Rician noise.

Tissue parameters at 3 T give the relative intensities; a pathology multiplies them. The ADC
map is computed from the noisy b0 and b1000 images, as a scanner does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from stroke_ray.phantom.grid import F32, Field, Grid, slab_mean
from stroke_ray.phantom.head import CSF, GM, WM, Scene

if TYPE_CHECKING:
    from stroke_ray.phantom import Phantom

__all__ = ["SEQUENCE_NAMES", "draw_protocol", "render"]

SEQUENCE_NAMES: tuple[str, ...] = ("t1", "t2", "flair", "dwi", "adc")
# Tissue parameters at 3 T (CSF, GM, WM): proton density, T1 and T2 (ms), ADC (mm²/s).
_PD = np.array([1.00, 0.80, 0.69])
_T1_MS = np.array([4000.0, 1350.0, 850.0])
_T2_MS = np.array([2000.0, 100.0, 80.0])
_ADC = np.array([3.0e-3, 0.85e-3, 0.75e-3])
_B_VALUE = 1000.0  # s/mm² of the diffusion-weighted image
_ADC_UNIT = 1e-6  # the ADC map is written in 10^-6 mm²/s, as clinical scanners do
_ADC_MAX = 4.0e-3
# Timing (TR, TE, TI in ms; TI 0 = no inversion): spin-echo T1, turbo spin-echo T2,
# FLAIR (TI near CSF's null), and spin-echo EPI for DWI (b0 and b1000).
_TIMING_MS = {
    "t1": (500.0, 10.0, 0.0),
    "t2": (4000.0, 100.0, 0.0),
    "flair": (9000.0, 120.0, 2500.0),
    "dwi": (5000.0, 90.0, 0.0),
}
# Scanner units of white matter per sequence (varied by +-20 % per case).
_WM_LEVEL = {"t1": 500.0, "t2": 400.0, "flair": 300.0, "dwi": 250.0}
# Rician noise sigma as a fraction of the white-matter signal.
_NOISE_FRACTION = {"t1": 0.025, "t2": 0.03, "flair": 0.035, "dwi": 0.05}


def draw_protocol(
    rng: np.random.Generator,
) -> tuple[dict[str, tuple[float, float, float]], dict[str, float]]:
    """(timing per sequence, +-7 %; white-matter level per sequence, +-20 %) of one scanner."""
    timing = {
        seq: tuple(float(t * rng.uniform(0.93, 1.07)) for t in values)
        for seq, values in _TIMING_MS.items()
    }
    wm_level = {seq: float(level * rng.uniform(0.8, 1.2)) for seq, level in _WM_LEVEL.items()}
    return timing, wm_level  # type: ignore[return-value]


def _signal(
    timing_ms: tuple[float, float, float],
    pd: np.ndarray,
    t1: np.ndarray,
    t2: np.ndarray,
    adc: np.ndarray,
    b_value: float = 0.0,
) -> np.ndarray:
    """Spin-echo / inversion-recovery signal of tissue with these parameters."""
    tr, te, ti = (F32(t) for t in timing_ms)
    inversion = np.abs(1 - 2 * np.exp(-ti / t1) + np.exp(-tr / t1))
    recovery = inversion if ti else 1 - np.exp(-tr / t1)
    signal = pd * recovery * np.exp(-te / t2)
    if b_value:
        signal = signal * np.exp(-F32(b_value) * adc)
    return signal


def _tissue_signal(phantom: Phantom, scene: Scene, name: str) -> np.ndarray:
    """Noise-free signal in the brain box: ``t1``, ``t2``, ``flair``, ``b0`` or ``b1000``."""
    seq = "dwi" if name in ("b0", "b1000") else name
    timing = phantom.timing_ms[seq]
    b_value = _B_VALUE if name == "b1000" else 0.0
    params = [np.asarray(p, dtype=F32) for p in (_PD, _T1_MS, _T2_MS, _ADC)]
    normal = _signal(timing, *params, b_value=b_value)  # (3,) CSF, GM, WM
    fractions = scene.fractions
    signal = np.tensordot(normal, fractions, axes=1)
    if name == "flair" and scene.flair_csf_gain is not None:
        signal += normal[CSF] * fractions[CSF] * (scene.flair_csf_gain - 1)
    changed = scene.changed_voxels()
    if changed.size:  # tissue whose parameters a pathology changed
        factors = np.exp(scene.log_change.reshape(4, -1)[:, changed])
        flat = signal.reshape(-1)
        for tissue in (GM, WM):
            modified = [p[tissue] * f for p, f in zip(params, factors, strict=True)]
            excess = _signal(timing, *modified, b_value=b_value) - normal[tissue]
            flat[changed] += fractions[tissue].reshape(-1)[changed] * excess
    if name in ("b0", "b1000") and scene.dwi_gain is not None:
        signal *= scene.dwi_gain
        if name == "b1000":
            signal *= scene.b1000_gain
    return signal * scene.brain


def _acquire(
    rng: np.random.Generator,
    signals: list[np.ndarray],
    brain: np.ndarray,
    grid: Grid,
    scale: float,
    sigma: float,
) -> list[np.ndarray]:
    """Bias field, scanner scale and Rician noise inside the brain (zero outside)."""
    lo, hi = grid.centre_mm - grid.fov_mm / 2, grid.centre_mm + grid.fov_mm / 2
    bias = np.exp(F32(rng.uniform(0.08, 0.15)) * Field.draw(rng, lo, hi, (3, 3, 3))(grid.axes_mm()))
    gain = (bias[brain] * F32(scale)).astype(F32)
    images = []
    for signal in signals:
        values = signal[brain] * gain
        real = values + F32(sigma) * rng.standard_normal(values.shape, dtype=F32)
        imag = F32(sigma) * rng.standard_normal(values.shape, dtype=F32)
        image = np.zeros(grid.shape, dtype=F32)
        image[brain] = np.sqrt(real**2 + imag**2)
        images.append(image)
    return images


def _wm_signal(phantom: Phantom, name: str) -> float:
    """Noise-free signal of normal white matter (the scanner scale is set on it)."""
    seq = "dwi" if name in ("b0", "b1000") else name
    b_value = _B_VALUE if name == "b1000" else 0.0
    params = [_PD[WM], _T1_MS[WM], _T2_MS[WM], _ADC[WM]]
    return float(_signal(phantom.timing_ms[seq], *(np.float32(p) for p in params), b_value=b_value))


def render(
    phantom: Phantom, scene: Scene, sequences: Sequence[str], seed: int, *, slab: int = 1
) -> dict[str, np.ndarray]:
    """Images of ``sequences`` on the scene's grid (``slab`` > 1: thick slices) and the label.

    Noise and bias are drawn from ``seed`` and the sequence, so a sequence looks the same
    whichever others are rendered with it. ``adc`` is computed from the noisy b0 and b1000
    images, as a scanner does; the DWI image is the b1000 one.
    """
    unknown = sorted(set(sequences) - set(SEQUENCE_NAMES))
    if unknown:
        raise ValueError(f"unknown sequences {unknown}; choose from {list(SEQUENCE_NAMES)}")
    grid, brain = scene.grid, scene.full(scene.brain)
    start = 0
    if slab > 1:
        grid, start = scene.grid.slabs(slab)
        brain = slab_mean(brain, slab, start) >= 0.5

    def signal(name: str) -> np.ndarray:
        full = scene.full(_tissue_signal(phantom, scene, name))
        if name in ("b0", "b1000") and phantom.artefacts.ghost:
            full += F32(phantom.artefacts.ghost) * np.roll(full, full.shape[1] // 2, axis=1)
        return slab_mean(full, slab, start) if slab > 1 else full

    images: dict[str, np.ndarray] = {}
    for seq in sequences:
        if seq in images:
            continue
        rng = np.random.default_rng([seed, SEQUENCE_NAMES.index("dwi" if seq == "adc" else seq)])
        if seq in ("dwi", "adc"):
            reference = _wm_signal(phantom, "b1000")
            scale = phantom.wm_level["dwi"] / reference
            sigma = _NOISE_FRACTION["dwi"] * phantom.wm_level["dwi"]
            b0, b1000 = _acquire(rng, [signal("b0"), signal("b1000")], brain, grid, scale, sigma)
            ratio = np.log(np.maximum(b0[brain], 1e-3) / np.maximum(b1000[brain], 1e-3))
            adc = np.zeros(grid.shape, dtype=F32)
            adc[brain] = np.clip(ratio / _B_VALUE, _ADC_UNIT, _ADC_MAX) / _ADC_UNIT
            images["dwi"], images["adc"] = b1000, adc
        else:
            scale = phantom.wm_level[seq] / _wm_signal(phantom, seq)
            sigma = _NOISE_FRACTION[seq] * phantom.wm_level[seq]
            (images[seq],) = _acquire(rng, [signal(seq)], brain, grid, scale, sigma)
    label = scene.full(scene.label, np.uint8)
    if slab > 1:
        label = ((slab_mean(label, slab, start) >= 0.5) & brain).astype(np.uint8)
    return {**{seq: images[seq] for seq in sequences}, "label": label}
