"""Run reports a person reads in the MLflow UI: tables, confusion matrices, curves and summary.md."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from skin.evaluate import SplitMetrics

if TYPE_CHECKING:
    from skin.config import PipelineConfig


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(confusion: pd.DataFrame, path: Path, title: str) -> None:
    """Counts and row-normalised recall side by side."""
    plt = _plt()
    counts = confusion.to_numpy()
    norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, data, fmt, name in (
        (axes[0], counts, "d", "counts"),
        (axes[1], norm, ".2f", "row-normalised"),
    ):
        im = ax.imshow(data, cmap="Blues")
        ax.set_xticks(range(len(confusion.columns)), confusion.columns, rotation=45)
        ax.set_yticks(range(len(confusion.index)), confusion.index)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} ({name})")
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                ax.text(
                    j,
                    i,
                    format(data[i, j], fmt),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if data[i, j] > data.max() / 2 else "black",
                )
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def learning_curves_png(history: list[dict[str, float]], path: Path) -> None:
    plt = _plt()
    h = pd.DataFrame(history)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    a.plot(h["epoch"], h["train_loss"], label="train loss")
    a.plot(h["epoch"], h["dev_loss"], label="dev loss")
    a.set_xlabel("epoch")
    a.legend()
    b.plot(h["epoch"], h["train_accuracy"], label="train accuracy")
    b.plot(h["epoch"], h["dev_accuracy"], label="dev accuracy")
    b.plot(h["epoch"], h["dev_balanced_accuracy"], label="dev balanced accuracy")
    b.set_xlabel("epoch")
    b.set_ylim(0, 1)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_class_png(per_class: pd.DataFrame, path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    per_class[["precision", "recall", "f1"]].plot.bar(ax=ax)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def roc_png(y: np.ndarray, probs: np.ndarray, classes: tuple[str, ...], path: Path) -> None:
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for c, name in enumerate(classes):
        if (y == c).any() and (y != c).any():
            fpr, tpr, _ = roc_curve(y == c, probs[:, c])
            ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("test ROC, one-vs-rest")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reliability_png(
    y: np.ndarray, probs: np.ndarray, path: Path, ece: float, bins: int = 15
) -> None:
    plt = _plt()
    conf, correct = probs.max(1), probs.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    mids, accs = [], []
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            mids.append(conf[m].mean())
            accs.append(correct[m].mean())
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.plot(mids, accs, "o-", label="model")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"test reliability (ECE {ece:.3f})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def misclassified_png(
    images: np.ndarray,
    rows: np.ndarray,
    y: np.ndarray,
    probs: np.ndarray,
    classes: tuple[str, ...],
    path: Path,
    n: int = 16,
) -> int:
    """The most confident mistakes on test: image, true and predicted class, probability.

    `images[rows[i]]` is the decoded uint8 image of row i of `y` and `probs` (only the drawn
    images are read from the memory-mapped cache).
    Returns how many were drawn (0 when the model made no mistake).
    """
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    if len(wrong) == 0:
        return 0
    worst = wrong[np.argsort(-probs[wrong, pred[wrong]])][:n]
    plt = _plt()
    cols = min(4, len(worst))
    lines = (len(worst) + cols - 1) // cols
    fig, axes = plt.subplots(lines, cols, figsize=(3.2 * cols, 3.5 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, worst, strict=False):
        ax.imshow(images[rows[i]])
        ax.set_title(
            f"true {classes[y[i]]}\npred {classes[pred[i]]} ({probs[i, pred[i]]:.2f})", fontsize=9
        )
    fig.suptitle("most confident test mistakes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(worst)


def metrics_table(metrics: Mapping[str, float]) -> pd.DataFrame:
    """Rows train/dev/test; columns accuracy, balanced accuracy, macro F1, AUC."""
    cols = ["accuracy", "balanced_accuracy", "macro_f1", "macro_auc"]
    rows = {
        s: {c: metrics.get(f"{s}_{c}", float("nan")) for c in cols}
        for s in ("train", "dev", "test")
    }
    return pd.DataFrame.from_dict(rows, orient="index")


def bias_variance_line(metrics: Mapping[str, float], reading: str | None = None) -> str:
    """The bias/variance reading in one line (CLI caption, run summary, Prefect artifact)."""
    line = (
        f"bias {metrics['bias']:+.4f} · variance {metrics['variance']:+.4f}"
        f" · variance_test {metrics['variance_test']:+.4f}"
    )
    return f"{line} → **{reading}**" if reading else line


def recipe_line(cfg: PipelineConfig) -> str:
    """The training recipe as the run summary states it."""
    m, t = cfg.model, cfg.train
    return (
        f"`{m.name}` (pretrained={m.pretrained}, weights={m.weights}), freeze `{m.freeze}`,"
        f" {t.optimizer} lr {t.lr}, batch {t.batch_size}, {t.epochs} epochs,"
        f" balance `{cfg.split.balance}`"
    )


@dataclass(frozen=True)
class RunFacts:
    """What the summary says of a run besides its scores: the data, its version, the recipe."""

    dataset: str
    manifest_hash: str
    counts: pd.DataFrame  # images per split and class
    recipe: str


@dataclass(frozen=True)
class Scored:
    """Evaluation's output per split: metrics, and (probabilities, true labels); plus the decoded
    images of the test rows (`images[test_rows[i]]` is row i's) for the page of mistakes."""

    classes: tuple[str, ...]
    results: Mapping[str, SplitMetrics]
    probs: Mapping[str, tuple[np.ndarray, np.ndarray]]
    images: np.ndarray
    test_rows: np.ndarray


def report_summary_markdown(metrics: Mapping[str, float], reading: str, facts: RunFacts) -> str:
    """The report's summary.md: data, recipe, metrics per split and the bias/variance reading."""
    lines = [
        "# Run summary",
        "",
        f"- Dataset: `{facts.dataset}` · manifest version `{facts.manifest_hash}`",
        f"- Recipe: {facts.recipe}",
        "",
        "## Images per split",
        "",
        facts.counts.to_markdown(),
        "",
        "## Metrics (best checkpoint)",
        "",
        metrics_table(metrics).to_markdown(floatfmt=".4f"),
        "",
        "## Bias and variance (the notebook's reading)",
        "",
        f"- human level: {metrics['human_level']:.2f}",
        f"- {bias_variance_line(metrics, reading)}",
        "",
        "bias = human level − train accuracy; variance = train − dev accuracy;"
        " variance_test = train − test accuracy.",
        "",
    ]
    return "\n".join(lines)


def _test_pictures(out: Path, scored: Scored) -> None:
    """Confusion, per-class bars, ROC, reliability and the most confident mistakes on test."""
    test = scored.results["test"]
    p, y = scored.probs["test"]
    confusion_png(test.confusion, out / "confusion_matrix_test.png", "test")
    per_class_png(test.per_class, out / "per_class_test.png", "test per class")
    roc_png(y, p, scored.classes, out / "roc_test.png")
    reliability_png(y, p, out / "reliability_test.png", test.scalars["ece"])
    misclassified_png(
        scored.images, scored.test_rows, y, p, scored.classes, out / "misclassified_test.png"
    )


def write_reports(
    out: Path,
    scored: Scored,
    metrics: Mapping[str, float],
    reading: str,
    history: list[dict[str, Any]],
    facts: RunFacts,
) -> None:
    """Every file a reader needs, in one folder logged as the run's `report/` artifacts."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(dict(metrics), indent=2, sort_keys=True))
    metrics_table(metrics).to_csv(out / "metrics_table.csv")
    for split, m in scored.results.items():
        m.per_class.to_csv(out / f"per_class_{split}.csv")
        m.confusion.to_csv(out / f"confusion_matrix_{split}.csv")
    if "test" in scored.results:
        _test_pictures(out, scored)
    if history:
        pd.DataFrame(history).to_csv(out / "history.csv", index=False)
        learning_curves_png(history, out / "learning_curves.png")
    (out / "summary.md").write_text(report_summary_markdown(metrics, reading, facts))
