"""Model cards (skin/modelcard.py): written from the run folder, claiming only what was measured."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skin.config import config_to_yaml, load_config
from skin.modelcard import model_card
from skin.runs import RunPaths


def make_run(tmp_path: Path, *, slices: bool) -> RunPaths:
    run = RunPaths(tmp_path, "r1")
    run.report.mkdir(parents=True)
    cfg = load_config(None, {"model.name": "test_resnet", "data.classes": ["MEL", "NV", "BCC"],
                             "split.majority_class": "NV", "evaluate.malignant": ["MEL", "BCC"],
                             "data.uri": "s3://bucket/isic", "train.image_size": 64})  # fmt: skip
    run.config.write_text(config_to_yaml(cfg))
    counts = pd.DataFrame({"train": [40, 40, 40], "dev": [5, 5, 5], "test": [5, 50, 5]},
                          index=pd.Index(["MEL", "NV", "BCC"], name="label"))  # fmt: skip
    counts.loc["total"] = counts.sum()
    counts.to_csv(run.split_counts)
    (run.report / "summary.md").write_text(
        "# Run summary\n\n## Metrics (best checkpoint)\n\ntest balanced accuracy 0.71 [0.62, 0.80]\n"
    )
    if slices:
        pd.DataFrame({"dimension": ["site", "site", "sex"], "value": ["head-neck", "palms-soles",
                      "female"], "n": [40, 3, 35], "scored": [True, False, True]}).to_csv(
            run.report / "slices_test.csv", index=False)  # fmt: skip
    return run


def test_card_states_use_data_recipe_results_and_limits(tmp_path: Path) -> None:
    card = model_card(make_run(tmp_path, slices=True), "7", name="skin-lesion-classifier")
    assert card.startswith("# Model card: skin-lesion-classifier v7")
    assert "**Not a diagnosis**" in card, "intended use says what it is not"
    assert "`s3://bucket/isic`" in card and "| NV" in card, "data and images per split"
    assert "Model `test_resnet`" in card and "input 64 px" in card, "the recipe"
    assert "## Metrics (best checkpoint)" in card and "0.71 [0.62, 0.80]" in card, "results"
    assert "Never trained on AK, BKL, DF, SCC, VASC." in card
    assert "Few test images for MEL (5), BCC (5)" in card, "uncertain recalls named"
    assert "site palms-soles (n=3)" in card and "never evaluated by age" in card
    assert "Skin tone is not labelled" in card


def test_card_without_metadata_says_slices_were_never_evaluated(tmp_path: Path) -> None:
    card = model_card(make_run(tmp_path, slices=False), "1", name="m")
    assert "Never evaluated by body site, sex or age" in card
