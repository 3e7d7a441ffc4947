"""The loss curve PNG (train loss, validation loss, validation bits per byte by step), written atomically."""
from __future__ import annotations

from pathlib import Path

from lmforge.metrics.logger import read_metrics
from lmforge.utils.io import atomic_path


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path, title: str = "") -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    bpb = [(r["step"], r["val_bpb"]) for r in rows if "val_bpb" in r]
    if not train and not val:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        axes[0].plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        axes[0].plot(*zip(*val), "o-", label="val loss", markersize=3)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss (nats / token)")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    if bpb:
        axes[1].plot(*zip(*bpb), "o-", color="tab:green", markersize=3)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("val bits per byte")
    axes[1].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True
