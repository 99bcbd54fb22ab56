"""The report's figures: learning curves, a confusion matrix, class shares, image grids and
t-SNE embeddings, each drawn with matplotlib from arrays and saved as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from transferkit.checks import PredictionShares


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """The figure as a PNG at ``path``, replaced whole (a full disk is one line naming it)."""
    from transferkit.training.runfolder import replace_file

    fig.tight_layout()
    try:
        replace_file(path, lambda handle: fig.savefig(handle, dpi=110, format="png"))
    finally:
        pyplot().close(fig)
    return path


def curves(history: list[dict[str, Any]], keys: list[tuple[str, str]], path: Path, x: str = "epoch") -> Path:
    plt = pyplot()
    groups = [g for g in keys if any(g[0] in h for h in history)]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 3.0), squeeze=False)
    for ax, (key, title) in zip(axes[0], groups, strict=True):
        if "stage" in history[0]:
            for stage in dict.fromkeys(h["stage"] for h in history):
                rows = [h for h in history if h["stage"] == stage and key in h]
                # epochs counted within each stage (older runs numbered them from 0, newer from 1)
                ax.plot(range(1, len(rows) + 1), [h[key] for h in rows], marker=".", label=stage)
            ax.legend(fontsize=7)
        else:
            rows = [h for h in history if key in h]
            ax.plot([h[x] for h in rows], [h[key] for h in rows], marker=".")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def confusion(
    true: np.ndarray, predicted: np.ndarray, classes: tuple[str, ...], path: Path, title: str
) -> Path:
    from sklearn.metrics import confusion_matrix

    plt = pyplot()
    matrix = confusion_matrix(true, predicted, labels=range(len(classes)))
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(classes), 1.0 + 0.45 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if value > matrix.max() / 2 else "black",
        )
    ax.set_xticks(range(len(classes)), [str(c)[:8] for c in classes], rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), [str(c)[:8] for c in classes], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def shares(shares: PredictionShares, path: Path) -> Path:
    """Bars per class: its share of the source labels, and of the model's predictions on the
    unlabelled target training images; flagged classes (transferkit.checks) in red."""
    plt = pyplot()
    count = len(shares.classes)
    x = np.arange(count)
    fig, ax = plt.subplots(figsize=(1.5 + 0.4 * count, 2.8))
    ax.bar(x - 0.2, shares.source, 0.4, color="tab:gray", label="source labels")
    colors = ["tab:red" if i in shares.flagged else "tab:blue" for i in range(count)]
    ax.bar(x + 0.2, shares.target, 0.4, color=colors, label="predicted on target train")
    ax.set_xticks(x, [str(c)[:8] for c in shares.classes], rotation=90 if count > 12 else 0,
                  fontsize=7)
    ax.set_ylabel("share of images", fontsize=8)
    ax.set_title(f"total variation {shares.total_variation:.3f}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def grid(rows: list[tuple[str, torch.Tensor]], path: Path) -> Path:
    """One row of uint8 C×H×W images per (label, images)."""
    plt = pyplot()
    columns = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * 0.9, len(rows) * 1.0), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c].permute(1, 2, 0).numpy())
        axes[r][0].set_title(label, fontsize=8, loc="left")
    return save_figure(fig, path)


# t-SNE's perplexity (an effective number of neighbors): 30 where there are enough points;
# fewer points get a third of their number (it must stay below it), and under TSNE_MIN_POINTS
# no embedding means anything: the figure is left out with a note.
TSNE_PERPLEXITY = 30.0
TSNE_MIN_POINTS = 5


def tsne_perplexity(points: int) -> float | None:
    """The perplexity used for ``points`` points, or None where there are too few for a t-SNE."""
    if points < TSNE_MIN_POINTS:
        return None
    return min(TSNE_PERPLEXITY, (points - 1) / 3)


def _tsne(
    panels: list[tuple[str, np.ndarray, np.ndarray, dict[int, str]]], path: Path, seed: int = 0
) -> Path | None:
    """Each panel: title, features, group index per point, group names. None (no figure) when
    a panel has fewer than ``TSNE_MIN_POINTS`` points."""
    from sklearn.manifold import TSNE

    perplexity = tsne_perplexity(min(len(features) for _, features, _, _ in panels))
    if perplexity is None:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (title, features, groups, names) in zip(axes[0], panels, strict=True):
        embedded = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(
            features.astype(np.float32)
        )
        for g, name in names.items():
            mask = groups == g
            ax.scatter(embedded[mask, 0], embedded[mask, 1], s=4, alpha=0.6, label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=3)
    return save_figure(fig, path)


def add_tsne(
    figures: list[tuple[Path, str]],
    notes: list[str],
    panels: list[tuple[str, np.ndarray, np.ndarray, dict[int, str]]],
    path: Path,
    caption: str,
) -> None:
    """The t-SNE figure with its caption, or, with too few points for one, a note instead."""
    points = min(len(features) for _, features, _, _ in panels)
    drawn = _tsne(panels, path)
    if drawn is None:
        path.unlink(missing_ok=True)  # not a picture of an earlier report left beside this one
        notes.append(f"No t-SNE figure: {points} images are too few for one (it needs at least "
                     f"{TSNE_MIN_POINTS}).")
        return
    perplexity = tsne_perplexity(points)
    if perplexity is not None and perplexity < TSNE_PERPLEXITY:
        caption += f" (perplexity {perplexity:.3g}, lowered from {TSNE_PERPLEXITY:g} to fit {points} points)"
    figures.append((drawn, caption))

