"""Plots, in one style. Every PNG groundup writes goes through here."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt  # noqa: E402


def new_figure(title: str, xlabel: str, ylabel: str, figsize=(7, 4.5)):
    fig, ax = plt.subplots(figsize=figsize, dpi=110)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def save_figure(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_loss_curves(records: list[dict], path: str | os.PathLike, title: str = "Learning curves") -> Path:
    """Train loss at every logged step, train/val loss at every evaluation."""
    fig, ax = new_figure(title, "step", "cross-entropy loss (nats/token)")
    logged = [r for r in records if "loss" in r]
    if logged:
        ax.plot([r["step"] for r in logged], [r["loss"] for r in logged], lw=1, alpha=0.5, label="train (batch)")
    evals = [r for r in records if "val_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["train_loss"] for r in evals], "o-", ms=3, label="train (eval)")
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", ms=3, label="val")
    if logged or evals:
        ax.legend()
    return save_figure(fig, path)
