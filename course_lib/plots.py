"""Figures the notebooks share: loss curves, schedules, attention heatmaps, and a font for
Chinese labels.

Each function draws on a given matplotlib ``Axes`` (or makes a figure), sets a title and axis
labels, and returns the ``Axes`` so a notebook can add to it.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np


def _axes(ax, figsize=(6.4, 4.0)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def smooth(values: Sequence[float], window: int = 25) -> np.ndarray:
    """Moving average (the first points average over fewer values), for noisy per-step losses."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0 or window <= 1:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    n = np.minimum(np.arange(1, len(v) + 1), window)
    return (c[1:] - c[np.arange(1, len(v) + 1) - n]) / n


def loss_curves(history, *, ax=None, label: str = "", title: str = "Training and validation loss",
                window: int = 25):
    """Per-step training loss (smoothed, with the raw values faint) and validation loss."""
    ax = _axes(ax)
    prefix = f"{label} " if label else ""
    if history.train_loss:
        line, = ax.plot(history.step, history.train_loss, alpha=0.2)
        ax.plot(history.step, smooth(history.train_loss, window), color=line.get_color(),
                label=f"{prefix}train (smoothed)")
    if history.val_loss:
        ax.plot(history.val_step, history.val_loss, "o-", label=f"{prefix}validation")
    ax.set(xlabel="optimiser step", ylabel="cross-entropy (nats per token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def schedule(lr_fn, steps: int, *, ax=None, title: str = "Learning-rate schedule"):
    """Plot ``lr_fn(step)`` for step in [0, steps]."""
    ax = _axes(ax, (6.4, 3.2))
    xs = np.arange(steps + 1)
    ax.plot(xs, [float(lr_fn(s)) for s in xs])
    ax.set(xlabel="optimiser step", ylabel="learning rate", title=title)
    ax.grid(alpha=0.3)
    return ax


def heatmap(weights, *, xlabels: Sequence[str] | None = None,
            ylabels: Sequence[str] | None = None, ax=None, title: str = "Attention weights",
            xlabel: str = "key position (attended to)", ylabel: str = "query position",
            colorbar: bool = True, cmap: str = "viridis"):
    """A (rows, cols) matrix of weights in [0, 1] as an image with optional tick labels."""
    w = np.asarray(weights, dtype=float)
    if w.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D matrix, got shape {w.shape}: pick one batch "
                         "element and one head, e.g. weights[0, head].")
    ax = _axes(ax, (0.35 * w.shape[1] + 2.5, 0.35 * w.shape[0] + 1.5))
    im = ax.imshow(w, cmap=cmap, vmin=0.0, vmax=max(float(w.max()), 1e-9), aspect="auto")
    for labels, set_ticks, set_labels in ((xlabels, ax.set_xticks, ax.set_xticklabels),
                                          (ylabels, ax.set_yticks, ax.set_yticklabels)):
        if labels is not None:
            set_ticks(range(len(labels)))
            set_labels([repr(s)[1:-1] if s.isspace() else s for s in labels])
    if xlabels is not None:
        plt.setp(ax.get_xticklabels(), rotation=90)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="weight")
    return ax


def cjk_font(text: str = "中文") -> str | None:
    """The name of a font matplotlib can find that draws every character of ``text``, or None.

    Without one, label with a transliteration instead (e.g. ``numberwords.PINYIN``), never with
    the empty boxes ("tofu") a font draws for characters it lacks. Use the name as
    ``fontfamily=`` of a text or tick label.
    """
    from fontTools.ttLib import TTFont
    from matplotlib import font_manager

    needed = {ord(c) for c in text}
    preferred = ("Noto Sans CJK", "Noto Sans SC", "Source Han Sans", "WenQuanYi", "SimHei",
                 "Microsoft YaHei", "PingFang", "Heiti", "Arial Unicode")
    fonts = sorted(font_manager.fontManager.ttflist,
                   key=lambda f: not any(f.name.startswith(p) for p in preferred))
    for font in fonts:
        if font.name.startswith("Last Resort"):  # draws every character as a box: no use
            continue
        try:
            with TTFont(font.fname, fontNumber=0, lazy=True) as tt:
                if needed <= set(tt.getBestCmap() or ()):
                    return font.name
        except Exception:  # noqa: BLE001 - an unreadable font file is simply skipped
            continue
    return None
