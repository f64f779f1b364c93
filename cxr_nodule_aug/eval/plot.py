"""FROC plot as a PNG (matplotlib's Agg canvas: no display, no global backend switch)."""

from __future__ import annotations

import os

from cxr_nodule_aug.eval.detection import DetectionMetrics

__all__ = ["plot_froc"]


def plot_froc(metrics: DetectionMetrics, path: str | os.PathLike, *, title: str | None = None,
              max_fp_per_image: float | None = None) -> None:
    """Draws the FROC curve of ``metrics`` and marks the sensitivity at the target FP/image.

    The all-thresholds curve is drawn as steps (the operating points a threshold can reach); the
    MONAI curve as the line segments MONAI interpolates along.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    fps, sens = metrics.froc_fps_per_image, metrics.froc_sensitivity
    if metrics.mode == "all-thresholds":
        ax.step(fps, sens, where="post", label="FROC (all thresholds)")
    else:
        ax.plot(fps, sens, marker=".", label="FROC (MONAI)")
    target = metrics.target_fp_per_image
    ax.axvline(target, color="0.6", linestyle="--", linewidth=1)
    ax.plot([target], [metrics.sensitivity_at_target_fp], "o", color="C3",
            label=f"sens@{target:g} FP/img = {metrics.sensitivity_at_target_fp:.3f}")
    right = max_fp_per_image if max_fp_per_image is not None else max(max(fps, default=0.0), 2 * target)
    ax.set_xlim(0, right * 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("sensitivity")
    ax.set_title(title or f"AUC {metrics.auc:.3f}   NODE21 score {metrics.node21_score:.3f}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
