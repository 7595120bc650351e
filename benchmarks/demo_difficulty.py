"""How hard is the demo? Dice of one-sequence thresholds against the label, and generation time.

For each case, each image is divided by its brain median; a threshold (the best single one over
all cases, chosen with the labels: an optimistic oracle) marks the lesion. If one sequence
alone separated lesion from background, the demo would test nothing: the realistic demo
should leave every single-sequence rule well below the Dice a network is expected to reach.

    python -m benchmarks.demo_difficulty --cases 12 --shape 64x64x48 --spacing 3
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from stroke_ray.demo import generate_cohort
from stroke_ray.phantom import SEQUENCE_NAMES

# Rules: (name, sequence, sign); sign -1 marks voxels darker than the threshold.
_RULES = [("DWI bright", "dwi", 1), ("FLAIR bright", "flair", 1), ("T2 bright", "t2", 1)]
_RULES += [("ADC dark", "adc", -1)]


def _dice(mask: np.ndarray, label: np.ndarray) -> float:
    total = mask.sum() + label.sum()
    return 1.0 if total == 0 else float(2 * (mask & label).sum() / total)


def _cases(root: Path, args: argparse.Namespace) -> tuple[list[dict], float]:
    """The demo cohort (every sequence) as arrays; and the seconds it took per case."""
    start = time.perf_counter()
    manifest = generate_cohort(
        root,
        n_cases=args.cases,
        shape=args.shape,
        spacing_mm=args.spacing,
        seed=args.seed,
        sequences=SEQUENCE_NAMES,
        thick_fraction=args.thick_fraction,
    )
    seconds = (time.perf_counter() - start) / args.cases
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    keys = (*SEQUENCE_NAMES, "label")
    cases = [{k: np.asanyarray(nib.load(root / row[k]).dataobj) for k in keys} for row in rows]
    return cases, seconds


def _normalised(case: dict, seq: str) -> np.ndarray:
    """The image over its brain median; NaN outside the brain (never above or below a threshold)."""
    brain = case["dwi"] > 0
    return np.where(brain, case[seq] / np.median(case[seq][brain]), np.nan)


def rule_dice(cases: list[dict]) -> dict[str, tuple[float, float]]:
    """Per rule: (best threshold, mean Dice over lesion cases at that threshold)."""
    results = {}
    lesion_cases = [case for case in cases if case["label"].any()]
    for name, seq, sign in _RULES:
        values = [(_normalised(case, seq), case["label"] == 1) for case in lesion_cases]
        best = (0.0, -1.0)
        for threshold in np.arange(0.3, 3.0, 0.05):
            dice = np.mean([_dice(sign * v > sign * threshold, label) for v, label in values])
            best = max(best, (float(dice), float(threshold)))
        results[name] = (best[1], best[0])
    # Both: DWI bright and ADC dark, each at its own best threshold over a small grid.
    best = (-1.0, 0.0, 0.0)
    for dwi_t in np.arange(1.0, 2.5, 0.1):
        for adc_t in np.arange(0.5, 1.0, 0.05):
            dice = np.mean(
                [
                    _dice(
                        (_normalised(c, "dwi") > dwi_t) & (_normalised(c, "adc") < adc_t),
                        c["label"] == 1,
                    )
                    for c in lesion_cases
                ]
            )
            best = max(best, (float(dice), float(dwi_t), float(adc_t)))
    results["DWI bright and ADC dark"] = (best[1], best[0])
    return results


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument(
        "--shape", type=lambda t: tuple(int(v) for v in t.split("x")), default=(64, 64, 48)
    )
    parser.add_argument("--spacing", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thick-fraction", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cases, seconds = _cases(Path(folder), args)
    print(
        f"{args.cases} cases of {args.shape} at {args.spacing} mm, seed {args.seed}, "
        f"thick fraction {args.thick_fraction}: {seconds:.2f} s/case (five sequences, written)"
    )
    print(f"{'rule':<26}{'threshold':>10}{'mean Dice':>11}")
    for name, (threshold, dice) in rule_dice(cases).items():
        print(f"{name:<26}{threshold:>10.2f}{dice:>11.3f}")


if __name__ == "__main__":
    main()
