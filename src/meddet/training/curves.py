"""The training curve PNG: loss and validation Dice against iterations, redrawn at every validation.

Why a picture: a flat or diverging curve is seen at a glance; the JSON-lines log holds the same numbers for tools.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curve(log_path: Path, png_path: Path) -> Path:
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    iterations = [r["iteration"] for r in records]
    fig, ax_loss = plt.subplots(figsize=(7, 4), dpi=100)
    ax_loss.plot(iterations, [r["loss"] for r in records], color="tab:blue", label="training loss")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("loss", color="tab:blue")
    if any("val_dice" in r for r in records):
        ax_dice = ax_loss.twinx()
        points = [(r["iteration"], r["val_dice"]) for r in records if "val_dice" in r]
        ax_dice.plot(*zip(*points), color="tab:red", marker="o", label="validation Dice (nodules)")
        sensitivity = [(r["iteration"], r["val_sensitivity"]) for r in records if r.get("val_sensitivity") is not None]
        if sensitivity:
            ax_dice.plot(*zip(*sensitivity), color="tab:green", marker="s", label="lesion sensitivity")
        ax_dice.set_ylabel("validation Dice / sensitivity", color="tab:red")
        ax_dice.set_ylim(0, 1)
        ax_dice.legend(loc="lower right", fontsize=8)
    ax_loss.set_title("meddet training")
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path
