"""A model card per registered version, written from the run's own files: what a clinician reads.

It states what the model is for, what it learned from, how, how well (with intervals, operating
points and slices where measured), what it answers for unknown lesions and where it has never
been tested, from the run folder alone (`config.yaml`, `split_counts.csv`, `report/summary.md`,
`report/slices_test.csv`, `report/abstention.json`), so nothing on the card is claimed that the
run did not measure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from skin.base.config import PipelineConfig, load_config
from skin.base.runs import RunPaths

INTENDED_USE = (
    "Research, and triage support by trained clinicians: a second opinion on dermoscopy images"
    " of the classes below. **Not a diagnosis**, and not for use without a clinician: every"
    " output is a probability from a model trained on one public dataset."
)
ISIC_CLASSES = ("AK", "BCC", "BKL", "DF", "MEL", "NV", "SCC", "VASC")


def model_card(run: RunPaths, version: str, *, name: str) -> str:
    """`model_card.md` for version `version` of `name`, from the run folder `run`."""
    cfg = load_config(run.config) if run.config.is_file() else None
    counts = _read_csv(run.split_counts, index_col=0)
    slices = _read_csv(run.report / "slices_test.csv")
    summary = run.report / "summary.md"
    lines = [
        f"# Model card: {name} v{version}",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        *_data_lines(cfg, counts),
        *_recipe_lines(cfg),
        "## Results",
        "",
        _results(summary),
        "## Unknown lesions",
        "",
        f"- {unknown_line(_read_json(run.report / 'abstention.json'))}",
        "",
        "## Known limitations",
        "",
        *[f"- {item}" for item in limitations(cfg, counts, slices)],
        "",
    ]
    return "\n".join(lines)


def unknown_line(doc: dict[str, Any] | None) -> str:
    """What the model answers for a lesion unlike its classes, from report/abstention.json."""
    if not doc:
        return "No abstention rule stored: every image gets one of the classes, even unknown ones."
    m = doc.get("measured", {})
    line = (
        f"Answers UNK when its {doc['score']} score ({doc['formula']}) is above"
        f" {doc['threshold']:.4f}, chosen on dev known images for coverage"
        f" {doc['coverage_target']} (dev coverage {doc['dev_coverage']:.3f})"
    )
    if "test_abstain_rate" in m:
        line += (
            f"; on test {m['test_abstain_rate']:.1%} of known lesions answered UNK, accuracy of"
            f" the accepted {m['test_accepted_accuracy']:.4f} (all {m['test_known_accuracy']:.4f})"
        )
    if "test_unk_auroc" in m:
        held = doc.get("holdout_class") or "a held-out class"
        line += f"; {held} held out as unknown: AUROC {m['test_unk_auroc']:.4f}"
    return line + "."


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_csv(path: Path, **kwargs: object) -> pd.DataFrame | None:
    return pd.read_csv(path, **kwargs) if path.is_file() else None


def _data_lines(cfg: PipelineConfig | None, counts: pd.DataFrame | None) -> list[str]:
    lines = ["## Training data", ""]
    if cfg is not None:
        lines += [f"- Dataset: `{cfg.data.uri}` ({cfg.data.layout} layout)"]
        lines += [f"- Split: {list(cfg.split.fractions)} train/dev/test by lesion, seed"
                  f" {cfg.split.seed}; train balance `{cfg.split.balance}`"]  # fmt: skip
    if counts is not None:
        lines += ["", "Images per class and split:", "", counts.to_markdown()]
    return [*lines, ""]


def _recipe_lines(cfg: PipelineConfig | None) -> list[str]:
    if cfg is None:
        return []
    m, t = cfg.model, cfg.train
    size = t.image_size or "the model's own"
    augment = "dermoscopy augmentation" if t.augment.enabled else "no augmentation"
    return [
        "## Recipe",
        "",
        f"- Model `{m.name}`, pretrained={m.pretrained} (weights {m.weights or 'timm default'}),"
        f" trained layers: `{m.freeze}`",
        f"- {t.epochs} epochs of {t.optimizer} at lr {t.lr}, batch {t.batch_size}, input {size}"
        f" px, {augment}, best epoch by dev balanced accuracy",
        "",
    ]


def _results(summary: Path) -> str:
    """The run summary's scores, with its title levels pushed one down."""
    if not summary.is_file():
        return "Not evaluated: no report.\n"
    body = summary.read_text().splitlines()
    body = [f"#{line}" if line.startswith("#") else line for line in body[1:]]
    return "\n".join(body) + "\n"


def limitations(
    cfg: PipelineConfig | None, counts: pd.DataFrame | None, slices: pd.DataFrame | None
) -> list[str]:
    """Where the model was never trained or tested, in plain words."""
    classes = tuple(cfg.data.classes) if cfg else ISIC_CLASSES
    items = [
        "It always answers one of the classes it was trained on; a lesion of any other kind"
        " (ISIC's 'none of the others', melanoma mimics outside the classes) gets a confident"
        " wrong answer unless abstention is on.",
    ]
    never = sorted(set(ISIC_CLASSES) - set(classes))
    if never:
        items.append(f"Never trained on {', '.join(never)}.")
    if counts is not None and "test" in counts:
        per_class = counts["test"].drop(index="total", errors="ignore")
        thin = [f"{c} ({int(n)})" for c, n in per_class.items() if n < 30]
        if thin:
            items.append(f"Few test images for {', '.join(thin)}: their recall is uncertain.")
    items.append(_metadata_limit(slices))
    if cfg is not None:
        size = cfg.train.image_size or "its own input size"
        items.append(
            f"Images are decoded, centre-cropped to a square and resized to {size} px: lesions"
            " off-centre or cut by the crop, and non-dermoscopic photos, were not evaluated."
        )
    return items


def _metadata_limit(slices: pd.DataFrame | None) -> str:
    if slices is None or slices.empty:
        return "Never evaluated by body site, sex or age: the data carried no patient metadata."
    scored = set(slices.loc[slices["scored"].astype(bool), "dimension"])
    missing = [what for dim, what in (("site", "body site"), ("sex", "sex"), ("age", "age"))
               if dim not in scored]  # fmt: skip
    small = slices.loc[~slices["scored"].astype(bool)]
    text = "Slices too small to score: " + (
        ", ".join(f"{r.dimension} {r.value} (n={r.n})" for r in small.itertuples(index=False))
        or "none"
    )
    if missing:
        text += f"; never evaluated by {', '.join(missing)}"
    return text + ". Skin tone is not labelled in ISIC 2019, so it was never evaluated."
