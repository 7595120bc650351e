"""Before/after tables of `stroke-ray experiment` folders: per arm, plane and fusion mode, mean
Dice, lesion-wise F1 and HD95 over the held-out cases (with how many cases each mean covers),
each fusion mode against each plane case by case (mean paired difference, its 95 % bootstrap
interval, wins/ties/losses), plus each arm's validation figures from its run.json.

    python -m benchmarks.accuracy_table LABEL=EXP_DIR [LABEL=EXP_DIR ...] --name NAME

writes ``benchmarks/results/accuracy/NAME.{csv,json,md}``. The ``fused`` rows of an experiment
are renamed ``fused_<mode>`` after the mode they used (experiment.json ``fusion``; majority for
folders written before it was recorded), so arms with different defaults line up.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import RESULTS_DIR
from stroke_ray.outputs import grouped_summary

METRICS = ("dice", "lesion_f1", "hd95_mm")
PAIRED_METRICS = ("dice", "lesion_f1")
PLANES = ("axial", "coronal", "sagittal")
BOOTSTRAP_SAMPLES = 10_000
SOURCES = ("axial", "coronal", "sagittal", "fused_majority", "fused_weighted", "fused_soft")


def _arm(label: str, folder: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    experiment = json.loads((folder / "experiment.json").read_text())
    fusion = experiment.get("fusion", "majority")
    frame = pd.read_parquet(folder / "metrics.parquet")
    frame = frame[frame["status"] == "ok"].copy()
    frame["source"] = frame["source"].replace({"fused": f"fused_{fusion}"})
    arm = experiment["arms"][0]
    run = json.loads((Path(arm["run_dir"]) / "run.json").read_text())
    segment = json.loads((Path(arm["segment_dir"]) / "segment.json").read_text())
    validation = {
        "arm": label,
        "spacing_mm": run.get("spacing_mm"),
        "min_lesion_ml": segment.get("min_lesion_ml", 0.0),
        **{f"val_dice_{p}": v["val_dice"] for p, v in run["planes"].items()},
        **{f"val_lesion_f1_{p}": v.get("val_lesion_f1") for p, v in run["planes"].items()},
        **{f"best_epoch_{p}": v.get("best_epoch") for p, v in run["planes"].items()},
    }
    fused = (run.get("validation") or {}).get("sources", {})
    for source, sizes in fused.items():
        values = sizes.get("0", {})
        validation[f"val_fused_score_{source}"] = values.get("score")
    validation["suggested_min_lesion_ml"] = run.get("suggested_min_lesion_ml")
    return frame.assign(arm=label), validation


def paired_differences(rows: pd.DataFrame) -> pd.DataFrame:
    """Per arm, fusion mode, plane and metric: fused − plane over the cases both scored (a case
    is (fold, case_id) in a cross-validation), with a percentile bootstrap 95 % interval."""
    keys = ["fold", "case_id"] if "fold" in rows and rows["fold"].notna().any() else ["case_id"]
    rng = np.random.default_rng(0)
    out = []
    for arm in rows["arm"].unique():
        arm_rows = rows[rows["arm"] == arm]
        for metric in PAIRED_METRICS:
            wide = arm_rows.pivot_table(index=keys, columns="source", values=metric)
            fused_sources = [c for c in SOURCES if c.startswith("fused_") and c in wide]
            pairs = [(f, p) for f in fused_sources for p in PLANES if p in wide]
            for fused, plane in pairs:
                diff = (wide[fused] - wide[plane]).dropna().to_numpy()
                if not diff.size:
                    continue
                means = rng.choice(diff, (BOOTSTRAP_SAMPLES, diff.size)).mean(axis=1)
                low, high = np.percentile(means, [2.5, 97.5])
                out.append({
                    "arm": arm, "metric": metric, "fused": fused, "plane": plane,
                    "cases": int(diff.size), "mean_diff": float(diff.mean()),
                    "ci_low": float(low), "ci_high": float(high),
                    "wins": int((diff > 1e-9).sum()), "ties": int((abs(diff) <= 1e-9).sum()),
                    "losses": int((diff < -1e-9).sum()),
                })  # fmt: skip
    return pd.DataFrame(out)


def _paired_markdown(paired: pd.DataFrame) -> list[str]:
    lines = [
        "",
        "Fused − plane, case by case (percentage points; 95 % bootstrap interval; wins/ties/losses):",
        "",
        "| arm | metric | fused | − axial | − coronal | − sagittal |",
        "|---|---|---|---|---|---|",
    ]
    for (arm, metric, fused), group in paired.groupby(["arm", "metric", "fused"], sort=False):
        cells = []
        for plane in PLANES:
            match = group[group["plane"] == plane]
            if match.empty:
                cells.append("")
                continue
            r = match.iloc[0]
            cells.append(
                f"{100 * r.mean_diff:+.1f} [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}] "
                f"{r.wins}/{r.ties}/{r.losses}"
            )
        lines.append(f"| {arm} | {metric} | {fused} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    """Build the table of the given experiment folders."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arms", nargs="+", metavar="LABEL=EXP_DIR")
    parser.add_argument("--name", required=True, help="file stem under results/accuracy/")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR / "accuracy"))
    args = parser.parse_args()
    frames, validations = [], []
    for item in args.arms:
        label, folder = item.split("=", 1)
        frame, validation = _arm(label, Path(folder))
        frames.append(frame)
        validations.append(validation)
    rows = pd.concat(frames, ignore_index=True)
    table = grouped_summary(rows, ["arm", "source"], METRICS)
    order = {label.split("=", 1)[0]: i for i, label in enumerate(args.arms)}
    table["_arm"] = table["arm"].map(order)
    table["_source"] = table["source"].map({s: i for i, s in enumerate(SOURCES)})
    table = table.sort_values(["_arm", "_source"]).drop(columns=["_arm", "_source"])
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = ["arm", "source", "cases"] + [
        f"{m}_{k}" for m in METRICS for k in ("mean", "sd", "cases")
    ] + ["dice_pooled", "tp", "fp", "fn"]  # fmt: skip
    table[columns].to_csv(out / f"{args.name}.csv", index=False)
    (out / f"{args.name}.json").write_text(
        json.dumps(
            {"arms": dict(a.split("=", 1) for a in args.arms), "validation": validations},
            indent=2,
            default=str,
        )
        + "\n"
    )
    lines = [
        "| arm | source | Dice % | lesion F1 % | HD95 mm | cases (Dice/F1/HD95) |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        cells = []
        for metric in METRICS:
            scale = 1 if metric.endswith("_mm") else 100
            mean, sd = row[f"{metric}_mean"] * scale, row[f"{metric}_sd"] * scale
            cells.append(f"{mean:.1f} ± {sd:.1f}")
        covered = "/".join(str(int(row[f"{metric}_cases"])) for metric in METRICS)
        lines.append(f"| {row['arm']} | {row['source']} | " + " | ".join(cells) + f" | {covered} |")
    paired = paired_differences(rows)
    paired.to_csv(out / f"{args.name}_paired.csv", index=False)
    lines.extend(_paired_markdown(paired))
    markdown = "\n".join(lines) + "\n"
    (out / f"{args.name}.md").write_text(markdown)
    print(markdown)
    print(pd.DataFrame(validations).T.to_string())


if __name__ == "__main__":
    main()
