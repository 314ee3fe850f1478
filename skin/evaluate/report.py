"""Run reports a person reads in the MLflow UI: tables, confusion matrices, curves and summary.md."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from skin.base.plots import pyplot
from skin.stats.metrics import SplitMetrics
from skin.stats.operating import OperatingPoint, threshold_name

SPLITS = ("train", "dev", "test")
METRIC_COLUMNS = ["accuracy", "balanced_accuracy", "macro_f1", "macro_auc"]
METADATA = ("age_approx", "anatom_site_general", "sex")  # patient columns a manifest may carry
SUMMARY_HEAD = 20  # lines of summary.md that become the MLflow run's description

if TYPE_CHECKING:
    from skin.base.config import PipelineConfig


def confusion_png(confusion: pd.DataFrame, path: Path, title: str) -> None:
    """Counts and row-normalised recall side by side."""
    plt = pyplot()
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


def learning_curves_png(
    history: list[dict[str, float]], path: Path, best_epoch: int | None = None
) -> None:
    """Loss and accuracy per epoch over the whole run, the best epoch marked."""
    plt = pyplot()
    h = pd.DataFrame(history)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    if best_epoch is not None:
        for ax in (a, b):
            ax.axvline(best_epoch, color="grey", ls=":", label=f"best epoch {best_epoch}")
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


def per_class_png(
    per_class: pd.DataFrame, path: Path, title: str, recall_ci: pd.DataFrame | None = None
) -> None:
    """Precision, recall and F1 per class; recall with its 95 % interval (`low`, `high`) if given."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    x, width = np.arange(len(per_class)), 0.27
    for i, metric in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (i - 1) * width, per_class[metric], width, label=metric)
    if recall_ci is not None:
        ci = recall_ci.reindex(per_class.index)
        low = (per_class["recall"] - ci["low"]).clip(lower=0).fillna(0)
        high = (ci["high"] - per_class["recall"]).clip(lower=0).fillna(0)
        ax.errorbar(x, per_class["recall"], yerr=[low, high], fmt="none", ecolor="k", capsize=3)
        ax.set_title(f"{title} (recall: 95 % interval)")
    else:
        ax.set_title(title)
    ax.set_xticks(x, per_class.index)
    ax.set_ylim(0, 1.05)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def roc_png(
    y: np.ndarray,
    probs: np.ndarray,
    classes: tuple[str, ...],
    path: Path,
    points: Sequence[OperatingPoint] = (),
) -> None:
    """One-vs-rest ROC per class; melanoma's operating points (thresholds from dev) marked."""
    from sklearn.metrics import roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for c, name in enumerate(classes):
        if (y == c).any() and (y != c).any():
            fpr, tpr, _ = roc_curve(y == c, probs[:, c])
            ax.plot(fpr, tpr, label=name)
    for p, marker in zip([p for p in points if p.name == "mel"], "os^v", strict=False):
        ax.plot(
            1 - p.specificity,
            p.sensitivity,
            marker,
            color="k",
            mfc="none",
            label=f"MEL at dev spec {p.target:.0%}",
        )
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("test ROC, one-vs-rest")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reliability_bins(
    y: np.ndarray, probs: np.ndarray, bins: int = 15
) -> tuple[list[float], list[float]]:
    """Mean confidence and accuracy of each non-empty confidence bin (lo, hi]."""
    conf, correct = probs.max(1), probs.argmax(1) == y
    mids, accs = [], []
    for lo, hi in itertools.pairwise(np.linspace(0, 1, bins + 1)):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            mids.append(float(conf[m].mean()))
            accs.append(float(correct[m].mean()))
    return mids, accs


def reliability_png(
    y: np.ndarray,
    probs: np.ndarray,
    path: Path,
    ece: float,
    bins: int = 15,
    calibrated: tuple[np.ndarray, float] | None = None,
) -> None:
    """Accuracy against confidence; with `calibrated` (probabilities, ECE) after scaling too."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.plot(*reliability_bins(y, probs, bins), "o-", label=f"model (ECE {ece:.3f})")
    title = f"test reliability (ECE {ece:.3f})"
    if calibrated is not None:
        scaled, ece_after = calibrated
        ax.plot(*reliability_bins(y, scaled, bins), "s-", label=f"calibrated (ECE {ece_after:.3f})")
        title = f"test reliability (ECE {ece:.3f} → {ece_after:.3f})"
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def slices_png(table: pd.DataFrame, path: Path, overall: float | None = None) -> bool:
    """Balanced accuracy per scored slice with its 95 % interval; False when none is scored."""
    scored = table[table["scored"].astype(bool)].reset_index(drop=True)
    if scored.empty:
        return False
    plt = pyplot()
    ba = scored["balanced_accuracy"].astype(float)
    low = (ba - scored["balanced_accuracy_ci_low"].astype(float)).clip(lower=0).fillna(0)
    high = (scored["balanced_accuracy_ci_high"].astype(float) - ba).clip(lower=0).fillna(0)
    fig, ax = plt.subplots(figsize=(7, 1.5 + 0.35 * len(scored)))
    pos = np.arange(len(scored))[::-1]
    ax.errorbar(ba, pos, xerr=[low, high], fmt="o", capsize=3)
    if overall is not None and np.isfinite(overall):
        ax.axvline(overall, color="grey", ls=":", label=f"all test images {overall:.3f}")
        ax.legend(fontsize=8)
    names = [f"{r.dimension}: {r.value} (n={r.n})" for r in scored.itertuples(index=False)]
    ax.set_yticks(pos, names)
    ax.set_xlim(0, 1)
    ax.set_xlabel("balanced accuracy (95 % interval)")
    ax.set_title("test slices")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


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
    plt = pyplot()
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


def metrics_table(metrics: Mapping[str, float], intervals: bool = False) -> pd.DataFrame:
    """Rows train/dev/test; columns accuracy, balanced accuracy, macro F1, AUC (numbers);
    with `intervals`, each followed by its `_ci_low` and `_ci_high` (nan where not computed)."""
    suffixes = ("", "_ci_low", "_ci_high") if intervals else ("",)
    cols = [f"{c}{s}" for c in METRIC_COLUMNS for s in suffixes]
    rows = {s: {c: metrics.get(f"{s}_{c}", float("nan")) for c in cols} for s in SPLITS}
    return pd.DataFrame.from_dict(rows, orient="index")


def with_interval(value: float, low: float | None, high: float | None) -> str:
    """`0.7120 [0.680, 0.740]`, or `0.7120` alone when no interval is known."""
    text = f"{value:.4f}"
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        text += f" [{low:.3f}, {high:.3f}]"
    return text


def metrics_table_text(metrics: Mapping[str, float]) -> pd.DataFrame:
    """metrics_table as text, each number with its 95 % interval in brackets (terminal, summary)."""

    def cell(name: str) -> str:
        return with_interval(
            metrics.get(name, float("nan")),
            metrics.get(f"{name}_ci_low"),
            metrics.get(f"{name}_ci_high"),
        )

    rows = {s: {c: cell(f"{s}_{c}") for c in METRIC_COLUMNS} for s in SPLITS}
    return pd.DataFrame.from_dict(rows, orient="index")


def intervals_line(n_resamples: int) -> str:
    """How the bracketed intervals were made (or that they were not)."""
    if n_resamples <= 0:
        return "no intervals (evaluate.bootstrap = 0)"
    return (
        f"[low, high]: 95 % bootstrap interval, {n_resamples} resamples of lesions"
        " (images of one lesion drawn together, within their class)"
    )


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
    n_resamples: int = 0  # bootstrap resamples behind the intervals (0: none)


@dataclass(frozen=True)
class Scored:
    """Evaluation's output per split: metrics, and (probabilities, true labels); plus the decoded
    images of the test rows (`images[test_rows[i]]` is row i's) for the page of mistakes, and
    each split's logits (the mean over TTA views) for temperature scaling."""

    classes: tuple[str, ...]
    results: Mapping[str, SplitMetrics]
    probs: Mapping[str, tuple[np.ndarray, np.ndarray]]
    images: np.ndarray
    test_rows: np.ndarray
    logits: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Findings:
    """What evaluation adds to the point metrics: predictions per split, the temperature fitted on
    dev (and test probabilities after it), operating points chosen on dev, and test slices."""

    predictions: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    calibration: Mapping[str, Any] = field(default_factory=dict)  # calibration.json
    calibrated_test: np.ndarray | None = None
    operating: Sequence[OperatingPoint] = ()
    positives: Mapping[str, list[str]] = field(default_factory=dict)  # question -> its classes
    slices: pd.DataFrame | None = None
    abstention: Mapping[str, Any] = field(default_factory=dict)  # abstention.json


def predictions_frame(
    rows: pd.DataFrame, probs: np.ndarray, classes: Sequence[str]
) -> pd.DataFrame:
    """One split's predictions: key, source, label, lesion_id, metadata present, `prob_<CLASS>`
    (calibrated, as served)."""
    if len(rows) != len(probs):
        raise ValueError(f"predictions: {len(rows)} manifest rows for {len(probs)} predictions")
    columns = ["key", "source", "label", "lesion_id", *(c for c in METADATA if c in rows)]
    out = rows.reindex(columns=columns).reset_index(drop=True)
    scores = pd.DataFrame(probs, columns=[f"prob_{c}" for c in classes])
    return pd.concat([out, scores], axis=1)


def with_raw_scores(
    frame: pd.DataFrame,
    raw: np.ndarray,
    logits: np.ndarray,
    classes: Sequence[str],
    *,
    held_out: bool = False,
) -> pd.DataFrame:
    """A predictions frame with `raw_prob_<CLASS>` (softmax of the mean TTA logits, T = 1: what
    the logged metrics are computed on), `logit_<CLASS>` (those logits) and `held_out` (True for
    the held-out class's images, scored but not of the model's classes)."""
    if not len(frame) == len(raw) == len(logits):
        raise ValueError(f"predictions: {len(frame)} rows for {len(raw)}/{len(logits)} scores")
    scores = pd.DataFrame(
        np.column_stack([raw, logits]),
        columns=[f"{p}{c}" for p in ("raw_prob_", "logit_") for c in classes],
    )
    out = pd.concat([frame.reset_index(drop=True), scores], axis=1)
    out["held_out"] = held_out
    return out


def operating_points_json(
    points: Sequence[OperatingPoint], positives: Mapping[str, list[str]]
) -> dict[str, Any]:
    """The thresholds chosen on dev with what they gave on test (for `report/operating_points.json`)."""
    return {
        "chosen_on": "dev",
        "score": "sum of the positive classes' calibrated probabilities"
        " (softmax(logits / temperature), as skin predict and the served model give them)",
        "rule": "positive when score >= threshold",
        # What prediction reads: `mel_threshold_at_spec90` and the like.
        **{threshold_name(p): _jsonable(p.threshold) for p in points},
        "points": [
            {**_jsonable(asdict(p)), "positive_classes": list(positives.get(p.name, []))}
            for p in points
        ],
    }


def _jsonable(value: Any) -> Any:
    """NaN as null, tuples as lists: strict JSON."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ci(metrics: Mapping[str, float], name: str) -> str:
    return with_interval(
        metrics.get(name, float("nan")),
        metrics.get(f"{name}_ci_low"),
        metrics.get(f"{name}_ci_high"),
    )


def _calibration_lines(metrics: Mapping[str, float]) -> list[str]:
    if "temperature" not in metrics:
        return []
    line = f"- temperature T = {metrics['temperature']:.3f} (fitted on dev logits)"
    if metrics.get("temperature_accepted") == 0.0:
        line = (
            f"- temperature fit rejected (T = {metrics.get('temperature_fitted', math.nan):.4g}"
            " at a bound or raising dev log loss): T = 1 served, see `calibration.json`"
        )
    if "test_ece_calibrated" in metrics:
        line += (
            f"; test ECE {metrics['test_ece']:.4f} → {metrics['test_ece_calibrated']:.4f},"
            f" log loss {metrics['test_log_loss']:.4f} → {metrics['test_log_loss_calibrated']:.4f}"
        )
    return ["## Calibration", "", line, ""]


def abstention_line(metrics: Mapping[str, float]) -> str | None:
    """The UNK answer in one line (CLI caption, run summary); None when not measured."""
    if "dev_abstain_threshold" not in metrics:
        return None
    line = (
        f"UNK above {metrics['dev_abstain_threshold']:.4f} (dev coverage"
        f" {metrics['dev_abstain_coverage']:.3f})"
    )
    if "test_abstain_rate" in metrics:
        line += (
            f" · test: {metrics['test_abstain_rate']:.3f} of known answered UNK, accuracy of"
            f" accepted {metrics['test_accepted_accuracy']:.4f} vs all {metrics['test_known_accuracy']:.4f}"
        )
    if "test_unk_auroc" in metrics:
        line += (
            f" · held-out class: AUROC {metrics['test_unk_auroc']:.4f}, UNK recall"
            f" {metrics['test_unk_recall']:.4f}, balanced accuracy with UNK"
            f" {metrics['test_balanced_accuracy_9']:.4f}"
        )
    return line


def _abstention_lines(metrics: Mapping[str, float], doc: Mapping[str, Any]) -> list[str]:
    line = abstention_line(metrics)
    if line is None:
        return []
    lines = ["## Unknown lesions (abstention)", "", f"- {line}"]
    if doc:
        lines.append(
            f"- score: {doc['score']} = {doc['formula']}, threshold chosen on dev known images"
            f" for coverage {doc['coverage_target']}; see `abstention.json`"
        )
    if doc.get("holdout_class"):
        both = ", ".join(
            f"{k} {metrics[f'test_unk_auroc_{k}']:.4f}"
            for k in ("energy", "msp")
            if f"test_unk_auroc_{k}" in metrics
        )
        lines.append(
            f"- held out of training: {doc['holdout_class']} (its test images are the unknowns);"
            f" test AUROC by score: {both}"
        )
    return [*lines, ""]


def _operating_lines(points: Sequence[OperatingPoint]) -> list[str]:
    if not points:
        return []
    rows = [
        {
            "question": p.name,
            "target specificity": f"{p.target:.2f}",
            "threshold (dev)": f"{p.threshold:.4f}",
            "test sensitivity": with_interval(p.sensitivity, *p.sensitivity_ci),
            "test specificity": with_interval(p.specificity, *p.specificity_ci),
            "test positives / negatives": f"{p.n_positive} / {p.n_negative}",
        }
        for p in points
    ]
    table = pd.DataFrame(rows).to_markdown(index=False)
    return ["## Operating points (thresholds chosen on dev, read on test)", "", table, ""]


def _slice_lines(slices: pd.DataFrame | None) -> list[str]:
    if slices is None or slices.empty:
        return []
    scored = slices[slices["scored"].astype(bool)]
    line = f"- {len(scored)} of {len(slices)} slices scored (the others are too small)"
    if len(scored):
        worst = scored.loc[scored["balanced_accuracy"].astype(float).idxmin()]
        ba = with_interval(
            worst["balanced_accuracy"],
            worst["balanced_accuracy_ci_low"],
            worst["balanced_accuracy_ci_high"],
        )
        line += f"; lowest balanced accuracy: {worst['dimension']} {worst['value']} {ba}"
    return ["## Slices (test)", "", f"{line}; see `slices_test.csv`", ""]


def report_summary_markdown(
    metrics: Mapping[str, float],
    reading: str,
    facts: RunFacts,
    findings: Findings | None = None,
) -> str:
    """The report's summary.md: data, recipe, metrics with intervals per split, bias/variance,
    then calibration, operating points and slices when measured, and the images per split."""
    findings = findings or Findings()
    lines = [
        "# Run summary",
        "",
        f"- Dataset: `{facts.dataset}` · manifest version `{facts.manifest_hash}`",
        f"- Recipe: {facts.recipe}",
        f"- {intervals_line(facts.n_resamples)}",
        "",
        "## Metrics (best checkpoint)",
        "",
        metrics_table_text(metrics).to_markdown(),
        "",
        "## Bias and variance (the notebook's reading)",
        "",
        f"- human level: {metrics['human_level']:.2f}",
        f"- {bias_variance_line(metrics, reading)}",
        "",
        "bias = human level − train accuracy; variance = train − dev accuracy;"
        " variance_test = train − test accuracy.",
        "",
        *_calibration_lines(metrics),
        *_abstention_lines(metrics, findings.abstention),
        *_operating_lines(findings.operating),
        *_slice_lines(findings.slices),
        "## Images per split",
        "",
        facts.counts.to_markdown(),
        "",
    ]
    return "\n".join(lines)


def summary_head(path: Path, lines: int = SUMMARY_HEAD) -> str:
    """The first lines of summary.md (the MLflow run's description)."""
    return "\n".join(path.read_text().splitlines()[:lines])


def recall_intervals(
    metrics: Mapping[str, float], split: str, classes: Sequence[str]
) -> pd.DataFrame | None:
    """Per-class recall intervals (`low`, `high`) from the flat metrics; None when there are none."""
    rows = {
        c: (metrics[f"{split}_recall_{c}_ci_low"], metrics[f"{split}_recall_{c}_ci_high"])
        for c in classes
        if f"{split}_recall_{c}_ci_low" in metrics
    }
    if not rows:
        return None
    return pd.DataFrame.from_dict(rows, orient="index", columns=["low", "high"])


def _test_pictures(
    out: Path, scored: Scored, metrics: Mapping[str, float], findings: Findings
) -> None:
    """Confusion, per-class bars, ROC, reliability and the most confident mistakes on test."""
    test = scored.results["test"]
    p, y = scored.probs["test"]
    confusion_png(test.confusion, out / "confusion_matrix_test.png", "test")
    ci = recall_intervals(metrics, "test", scored.classes)
    per_class_png(test.per_class, out / "per_class_test.png", "test per class", ci)
    roc_png(y, p, scored.classes, out / "roc_test.png", findings.operating)
    calibrated = None
    if findings.calibrated_test is not None and "test_ece_calibrated" in metrics:
        calibrated = (findings.calibrated_test, metrics["test_ece_calibrated"])
    reliability_png(y, p, out / "reliability_test.png", test.scalars["ece"], calibrated=calibrated)
    misclassified_png(
        scored.images, scored.test_rows, y, p, scored.classes, out / "misclassified_test.png"
    )


def _write_findings(out: Path, findings: Findings, metrics: Mapping[str, float]) -> None:
    """Predictions per split, the temperature, the thresholds and the slice table (and chart)."""
    for split, frame in findings.predictions.items():
        frame.to_parquet(out / f"predictions_{split}.parquet", index=False)
    if findings.calibration:
        text = json.dumps(_jsonable(dict(findings.calibration)), indent=2)
        (out / "calibration.json").write_text(text)
    if findings.abstention:
        text = json.dumps(_jsonable(dict(findings.abstention)), indent=2)
        (out / "abstention.json").write_text(text)
    if findings.operating:
        doc = operating_points_json(findings.operating, findings.positives)
        (out / "operating_points.json").write_text(json.dumps(doc, indent=2))
    if findings.slices is not None:
        findings.slices.to_csv(out / "slices_test.csv", index=False)
        overall = metrics.get("test_balanced_accuracy")
        slices_png(findings.slices, out / "slices_test.png", overall)


def write_reports(
    out: Path,
    scored: Scored,
    metrics: Mapping[str, float],
    reading: str,
    history: list[dict[str, Any]],
    facts: RunFacts,
    findings: Findings | None = None,
) -> None:
    """Every file a reader needs, in one folder logged as the run's `report/` artifacts."""
    findings = findings or Findings()
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(dict(metrics), indent=2, sort_keys=True))
    metrics_table(metrics, intervals=True).to_csv(out / "metrics_table.csv")
    for split, m in scored.results.items():
        m.per_class.to_csv(out / f"per_class_{split}.csv")
        m.confusion.to_csv(out / f"confusion_matrix_{split}.csv")
    if "test" in scored.results:
        _test_pictures(out, scored, metrics, findings)
    _write_findings(out, findings, metrics)
    if history:
        pd.DataFrame(history).to_csv(out / "history.csv", index=False)
        best = metrics.get("best_epoch")
        best_epoch = int(best) if best is not None and math.isfinite(best) else None
        learning_curves_png(history, out / "learning_curves.png", best_epoch)
    (out / "summary.md").write_text(report_summary_markdown(metrics, reading, facts, findings))
