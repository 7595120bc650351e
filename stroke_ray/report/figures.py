"""Report figures drawn with matplotlib (Agg) and returned as compact PNG bytes.

Case pictures take RAS-ordered volumes (axis 0 → right, 1 → anterior, 2 → superior) and show
them in radiological convention: the patient's right on the image left in axial and coronal
views, anterior on the left in sagittal views, superior or anterior up; pixels are drawn at
their size in mm, so anisotropic voxels keep the true aspect.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen first
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

__all__ = [
    "CONVENTION",
    "TRUTH_COLOUR",
    "PREDICTION_COLOUR",
    "png_bytes",
    "slice_centre",
    "case_figure",
    "dice_boxplot",
    "training_curves",
    "qc_scatter",
]

CONVENTION = (
    "radiological convention: patient's right on the image left (axial, coronal), "
    "anterior on the left (sagittal)"
)
TRUTH_COLOUR = "#00e000"
PREDICTION_COLOUR = "#ff30ff"
DPI = 80
_PLANE_COLOURS = {"axial": "tab:blue", "coronal": "tab:orange", "sagittal": "tab:green"}
_GROUP_COLOURS = ("tab:blue", "tab:red", "tab:purple", "tab:olive", "tab:cyan")
_LINE_STYLES = ("-", "--", ":", "-.")
# view name, RAS axis cut, letters at (left, right, top, bottom) after the display flip
_VIEWS = (
    ("axial", 2, ("R", "L", "A", "P")),
    ("coronal", 1, ("R", "L", "S", "I")),
    ("sagittal", 0, ("A", "P", "S", "I")),
)


def png_bytes(fig: Figure) -> bytes:
    """Render a figure to an optimised 256-colour PNG and close it."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(colors=256)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def slice_centre(truth: np.ndarray | None, prediction: np.ndarray) -> tuple[int, int, int]:
    """Voxel of truth ∪ prediction nearest its centre of mass (the volume centre if empty).

    Snapping to the union keeps every view on a lesion when the centre of mass of several
    lesions falls between them.
    """
    union = prediction > 0 if truth is None else (prediction > 0) | (truth > 0)
    if not union.any():
        return tuple(n // 2 for n in union.shape)  # type: ignore[return-value]
    voxels = np.argwhere(union)
    centre = np.asarray(ndimage.center_of_mass(union))
    nearest = voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))]
    return tuple(int(v) for v in nearest)  # type: ignore[return-value]


def _window(volume: np.ndarray) -> tuple[float, float]:
    """Display range: 1st to 99.5th percentile of the non-zero voxels."""
    values = volume[volume != 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [1.0, 99.5])
    return float(low), float(max(high, low + 1e-6))


def _draw_view(ax, sections: dict[str, np.ndarray | None], sizes, window, letters) -> None:
    """One panel: the image section, truth and prediction outlines, orientation letters."""
    image = sections["image"]
    width, height = image.shape[0] * sizes[0], image.shape[1] * sizes[1]
    ax.imshow(
        image.T,
        cmap="gray",
        vmin=window[0],
        vmax=window[1],
        origin="lower",
        extent=(0, width, 0, height),
        interpolation="nearest",
    )
    x = (np.arange(image.shape[0]) + 0.5) * sizes[0]
    y = (np.arange(image.shape[1]) + 0.5) * sizes[1]
    for key, colour in (("truth", TRUTH_COLOUR), ("prediction", PREDICTION_COLOUR)):
        mask = sections[key]
        if mask is not None and mask.any() and not mask.all():
            ax.contour(x, y, mask.T.astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
    ax.set_xlim(width, 0)  # radiological: the first letter's side on the image left
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    style = {"color": "yellow", "fontsize": 8, "transform": ax.transAxes}
    ax.text(0.02, 0.5, letters[0], ha="left", va="center", **style)
    ax.text(0.98, 0.5, letters[1], ha="right", va="center", **style)
    ax.text(0.5, 0.98, letters[2], ha="center", va="top", **style)
    ax.text(0.5, 0.02, letters[3], ha="center", va="bottom", **style)


def case_figure(
    images: dict[str, np.ndarray],
    truth: np.ndarray | None,
    prediction: np.ndarray,
    spacing_mm: Sequence[float],
    title: str,
) -> bytes:
    """A rows-by-3 grid (one row per named RAS image; axial, coronal, sagittal) with outlines."""
    centre = slice_centre(truth, prediction)
    fig, axes = plt.subplots(len(images), 3, figsize=(7.2, 2.3 * len(images) + 0.6), squeeze=False)
    for row, (name, volume) in enumerate(images.items()):
        window = _window(volume)
        for column, (view, axis, letters) in enumerate(_VIEWS):
            index = centre[axis]
            cut = {
                "image": np.take(volume, index, axis=axis),
                "truth": None if truth is None else np.take(truth, index, axis=axis) > 0,
                "prediction": np.take(prediction, index, axis=axis) > 0,
            }
            sizes = [s for a, s in enumerate(spacing_mm) if a != axis]
            ax = axes[row, column]
            _draw_view(ax, cut, sizes, window, letters)
            if row == 0:
                ax.set_title(f"{view} (slice {index})", fontsize=9)
            if column == 0:
                ax.set_ylabel(name, fontsize=10)
    handles = [Line2D([], [], color=PREDICTION_COLOUR, label="prediction")]
    if truth is not None:
        handles.insert(0, Line2D([], [], color=TRUTH_COLOUR, label="ground truth"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.9, bottom=0.07, wspace=0.04, hspace=0.12)
    return png_bytes(fig)


def dice_boxplot(frame: pd.DataFrame, categories: Sequence[str], groups: Sequence[str]) -> bytes:
    """Box plots of ``dice`` per category (x) and group (side by side); columns category, group, dice."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(categories) * max(len(groups), 1)), 3.6))
    width = 0.8 / max(len(groups), 1)
    rng = np.random.default_rng(0)
    for g, group in enumerate(groups):
        colour = _GROUP_COLOURS[g % len(_GROUP_COLOURS)]
        for c, category in enumerate(categories):
            values = frame.loc[
                (frame["category"] == category) & (frame["group"] == group), "dice"
            ].dropna()
            if values.empty:
                continue
            position = c + (g - (len(groups) - 1) / 2) * width
            box = ax.boxplot(
                values,
                positions=[position],
                widths=0.85 * width,
                patch_artist=True,
                showfliers=False,
            )
            box["boxes"][0].set(facecolor=colour, alpha=0.35, edgecolor=colour)
            jitter = rng.uniform(-0.2, 0.2, len(values)) * width
            ax.scatter(position + jitter, values, s=8, color=colour, zorder=3)
    ax.set_xticks(range(len(categories)), categories, rotation=20 if len(categories) > 4 else 0)
    ax.set_xlim(-0.6, len(categories) - 0.4)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Dice per case")
    ax.grid(axis="y", alpha=0.3)
    if len(groups) > 1:
        patches = [
            Patch(color=_GROUP_COLOURS[g % len(_GROUP_COLOURS)], alpha=0.5, label=group)
            for g, group in enumerate(groups)
        ]
        ax.legend(handles=patches, fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


def training_curves(history: pd.DataFrame) -> bytes:
    """Validation Dice and training loss per epoch (1-based): colour per plane, style per group."""
    fig, (dice_ax, loss_ax) = plt.subplots(1, 2, figsize=(9.0, 3.4))
    groups = list(dict.fromkeys(history["group"]))
    for (group, plane), rows in history.groupby(["group", "plane"], sort=False):
        rows = rows.sort_values("epoch")
        style = {
            "color": _PLANE_COLOURS.get(plane, "tab:gray"),
            "linestyle": _LINE_STYLES[groups.index(group) % len(_LINE_STYLES)],
            "marker": "o",
            "markersize": 3,
            "label": plane if len(groups) == 1 else f"{plane} · {group}",
        }
        dice_ax.plot(rows["epoch"] + 1, rows["val_dice"], **style)
        loss_ax.plot(rows["epoch"] + 1, rows["train_loss"], **style)
    dice_ax.set(xlabel="epoch", ylabel="validation Dice", ylim=(-0.02, 1.02))
    loss_ax.set(xlabel="epoch", ylabel="training loss")
    for ax in (dice_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)


def qc_scatter(frame: pd.DataFrame, title: str) -> bytes:
    """Fused Dice against plane agreement; columns case_id, agreement_dice, dice, qc_flag."""
    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    flagged = frame["qc_flag"].notna()
    for mask, colour, label in ((~flagged, "tab:blue", "no flag"), (flagged, "tab:red", "flagged")):
        if mask.any():
            ax.scatter(
                frame.loc[mask, "agreement_dice"],
                frame.loc[mask, "dice"],
                s=16,
                color=colour,
                label=label,
            )
    if len(frame) <= 20:
        for row in frame.itertuples():
            ax.annotate(row.case_id, (row.agreement_dice, row.dice), fontsize=6, alpha=0.7)
    ax.set(
        xlabel="plane agreement (mean pairwise Dice)",
        ylabel="fused Dice",
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
        title=title,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return png_bytes(fig)
