"""Model cards (skin/evaluate/modelcard.py): written from the run folder, claiming only what was measured."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skin.base.config import config_to_yaml, load_config
from skin.base.runs import RunPaths
from skin.evaluate.modelcard import model_card


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


def test_card_states_the_unk_rule_and_what_it_gave_on_test(tmp_path: Path) -> None:
    """The card's 'Unknown lesions' line: score kind, dev coverage, test abstention rate and
    accepted accuracy, and the held-out-class AUROC where one was measured."""
    import json

    from skin.stats.abstain import Abstention, abstention_json

    run = make_run(tmp_path, slices=False)
    measured = {"test_abstain_rate": 0.0625, "test_accepted_accuracy": 0.8123,
                "test_known_accuracy": 0.7801}  # fmt: skip
    doc = abstention_json(Abstention("msp", 0.3712), 0.95, 1.3, [0.1] * 19 + [0.9],
                          measured=measured)  # fmt: skip
    (run.report / "abstention.json").write_text(json.dumps(doc))
    card = model_card(run, "2", name="m")
    line = next(x for x in card.splitlines() if x.startswith("- Answers UNK"))
    assert "msp score" in line and "above 0.3712" in line and "(dev coverage 0.950)" in line
    assert "6.2% of known lesions answered UNK" in line and "accepted 0.8123" in line, line
    assert "AUROC" not in line, "no held-out class, no AUROC claimed"
    doc["measured"] |= {"test_unk_auroc": 0.83}
    doc["holdout_class"] = "DF"
    (run.report / "abstention.json").write_text(json.dumps(doc))
    assert "DF held out as unknown: AUROC 0.8300" in model_card(run, "2", name="m")
    (run.report / "abstention.json").unlink()
    assert "No abstention rule stored" in model_card(run, "2", name="m")
