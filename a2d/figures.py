"""Diagnostics figures from a training summary (`train.json`): the AAM's learned mixing weights as
heatmaps, and the training curves of every loss term."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from a2d.files import InputError, atomic_path  # noqa: E402
from a2d.summary import TrainingSummary  # noqa: E402

TITLES = {"encoder_self": "encoder self-attention", "decoder_self": "decoder self-attention",
          "decoder_cross": "decoder cross-attention"}


def plot_alignment(summary_path: str, output: str) -> None:
    """One heatmap per attention type: teacher channels (rows) x student channels (columns), with
    lines between layers. Faithful AAMs show raw 1x1-conv weights, corrected ones softmax mixes."""
    summary = TrainingSummary.read(summary_path)
    alignment = summary.alignment
    if not alignment:
        raise InputError(f"{summary_path}: system {summary.system!r} has no attention alignment module")
    weights = alignment["weights"]
    fig, axes = plt.subplots(1, len(weights), figsize=(4.2 * len(weights), 4.4), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], weights.items()):
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", interpolation="nearest")
        for step, size, draw, ticks in ((alignment["student_heads_per_layer"], len(matrix[0]), ax.axvline, ax.set_xticks),
                                        (alignment["teacher_heads_per_layer"], len(matrix), ax.axhline, ax.set_yticks)):
            for boundary in range(step, size, step):  # a line between layers, a label per layer
                draw(boundary - 0.5, color="white", linewidth=1.2)
            ticks([start + (step - 1) / 2 for start in range(0, size, step)],
                  [f"L{layer + 1}" for layer in range(size // step)])
        ax.set_title(TITLES.get(name, name))
        ax.set_xlabel(f"student channel ({alignment['student_heads_per_layer']} per layer)")
        ax.set_ylabel(f"teacher channel ({alignment['teacher_heads_per_layer']} per layer)")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(f"{summary.system} ({summary.method}): AAM weights at the best epoch ({summary.best_epoch})")
    save(fig, output)


def plot_training(summary_path: str, output: str) -> None:
    """Each loss term per target token, and validation BLEU, by epoch."""
    save(training_figure(TrainingSummary.read(summary_path)), output)


def training_figure(summary: TrainingSummary):
    """The curves figure; its legend sits beside the loss panel, where it covers no line."""
    history = summary.history
    epochs = [h.epoch for h in history]
    names = sorted({name for h in history for name in h.terms_per_token})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4), width_ratios=(1.25, 1))
    for name in names:
        left.plot(epochs, [h.terms_per_token.get(name) for h in history], marker="o", label=name)
    left.set_yscale("symlog", linthresh=1e-3)
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("epoch")
    left.set_ylabel("per target token (mean over the epoch)")
    left.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    right.plot(epochs, [h.valid_bleu for h in history], marker="o", color="black")
    right.set_xlabel("epoch")
    right.set_ylabel("validation BLEU (greedy)")
    fig.suptitle(f"{summary.system} ({summary.method})")
    fig.tight_layout()
    return fig


def save(fig, output: str) -> None:
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
