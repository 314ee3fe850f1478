"""The error gallery: per class, the most confident test mistakes and the least confident correct
answers, each with its class-activation map (for the answer given); melanoma misses at the
90 %-specificity operating point on their own sheet. Bounded by `explain.gallery_max` images a
sheet, so it costs one map per image (README: Seeing what the model looked at)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from skin.base.config import ExplainConfig
from skin.base.plots import pyplot
from skin.data.images import centre_crop
from skin.serve.explain import class_maps, overlay
from skin.train.datasets import Normalize
from skin.train.model import InputSpec

MEL = "MEL"


@dataclass(frozen=True)
class Shown:
    """Test images to draw (indices into the test rows) and why each was picked."""

    index: np.ndarray
    why: list[str]


def error_picks(y: np.ndarray, probs: np.ndarray, per_class: int, limit: int) -> Shown:
    """Per given class, its `per_class` most confident mistakes and least confident correct
    answers (by the probability of the answer), class by class, at most `limit` in all."""
    answer, confidence = probs.argmax(1), probs.max(1)
    index, why = [], []
    for c in np.unique(y):
        wrong = np.flatnonzero((y == c) & (answer != c))
        right = np.flatnonzero((y == c) & (answer == c))
        most_sure_wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
        least_sure_right = right[np.argsort(confidence[right], kind="stable")]
        for picked, kind in ((most_sure_wrong, "mistake"), (least_sure_right, "least sure hit")):
            index += picked[:per_class].tolist()
            why += [kind] * min(per_class, len(picked))
    return Shown(np.array(index[:limit], dtype=int), why[:limit])


def mel_misses(
    y: np.ndarray, probs: np.ndarray, classes: Sequence[str], threshold: float, limit: int
) -> Shown:
    """Melanomas whose p(MEL) is under the operating threshold, the most confidently missed first."""
    if MEL not in classes:
        return Shown(np.zeros(0, dtype=int), [])
    mel = list(classes).index(MEL)
    missed = np.flatnonzero((y == mel) & (probs[:, mel] < threshold))
    order = missed[np.argsort(probs[missed, mel], kind="stable")][:limit]
    return Shown(order, [f"p(MEL) {probs[i, mel]:.2f} < {threshold:.2f}" for i in order])


def gallery_png(
    crops: np.ndarray, cams: np.ndarray, captions: Sequence[str], title: str, path: Path
) -> None:
    """A sheet of overlays, four across, each captioned."""
    plt = pyplot()
    cols = min(4, len(crops))
    lines = (len(crops) + cols - 1) // cols
    fig, axes = plt.subplots(lines, cols, figsize=(3.0 * cols, 3.4 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, crop, cam, caption in zip(axes.flat, crops, cams, captions, strict=False):
        ax.imshow(overlay(crop, cam))
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_gallery(
    out: Path,
    split: str,
    net: torch.nn.Module,
    spec: InputSpec,
    images: np.ndarray,
    rows: np.ndarray,
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    settings: ExplainConfig,
    *,
    mel_threshold: float | None = None,
    tta: bool = False,
) -> list[Path]:
    """`gallery_<split>.png` and, with a MEL threshold and misses, `gallery_<split>_mel_misses.png`
    in `out`: `images[rows[i]]` is the decoded image of row i of `y` and `probs` (the served
    probabilities); only the drawn ones are read and cropped as the model saw them. Returns the
    files written (none with `settings.gallery` 0)."""
    if settings.gallery == 0 or len(y) == 0:
        return []
    sheets = {f"gallery_{split}.png": (error_picks(y, probs, settings.gallery, settings.gallery_max),
                                       f"{split}: confident mistakes and least sure correct answers")}  # fmt: skip
    if mel_threshold is not None:
        misses = mel_misses(y, probs, classes, mel_threshold, settings.gallery_max)
        sheets[f"gallery_{split}_mel_misses.png"] = (
            misses,
            f"{split}: melanomas missed at 90 % specificity",
        )
    written = []
    norm = Normalize(spec).to(next(net.parameters()).device)
    for name, (shown, title) in sheets.items():
        if len(shown.index) == 0:
            continue
        answer = probs[shown.index].argmax(1)
        crops = np.ascontiguousarray(centre_crop(images[rows[shown.index]], spec.size))
        cams = class_maps(net, norm, crops, answer, method=settings.method,
                          layer=settings.target_layer, tta=tta)  # fmt: skip
        captions = [
            f"given {classes[y[i]]} · answer {classes[a]} {probs[i, a]:.2f}\n{why}"
            for i, a, why in zip(shown.index, answer, shown.why, strict=True)
        ]
        gallery_png(crops, cams, captions, f"{title} · {settings.method}", out / name)
        written.append(out / name)
    return written
