"""Model references: every accepted form parses to its kind, prints back, and bad input is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from skin.track.refs import (
    DEFAULT_MODEL,
    FORMS,
    AliasRef,
    CheckpointRef,
    EnsembleRef,
    LoggedModelRef,
    ModelRef,
    ModelRefError,
    RunRef,
    VersionRef,
    as_model_ref,
    champion,
    parse_model_ref,
)

RUN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"runs:/{RUN}/model", RunRef(RUN, "model")),
        (f"runs:/{RUN}/checkpoints/epoch_0001.pt", RunRef(RUN, "checkpoints/epoch_0001.pt")),
        (f"runs:/{RUN}", RunRef(RUN, "")),
        (RUN, RunRef(RUN, "model")),
        ("models:/skin-lesion-classifier@champion", AliasRef("skin-lesion-classifier", "champion")),
        ("models:/skin/12", VersionRef("skin", "12")),
        ("models:/m-0123abcd", LoggedModelRef("m-0123abcd")),
        ("s3://bucket/runs/best.pt", CheckpointRef("s3://bucket/runs/best.pt")),
        ("checkpoints/best.pt", CheckpointRef("checkpoints/best.pt")),
        ("somewhere/members.json", EnsembleRef("somewhere/members.json")),
    ],
)
def test_every_form_parses_to_its_kind_and_prints_back(text: str, expected: ModelRef) -> None:
    ref = parse_model_ref(text)
    assert ref == expected and type(ref) is type(expected), (text, ref)
    assert str(ref) == text, "str() gives back the string as given"
    assert parse_model_ref(str(ref)) == ref, "and it parses to the same reference"
    assert ref.is_mlflow == text.startswith(("runs:/", "models:/", RUN))


def test_a_bare_run_id_is_that_runs_model_and_prints_as_given() -> None:
    ref = parse_model_ref(RUN)
    assert isinstance(ref, RunRef) and ref.uri == f"runs:/{RUN}/model"
    assert str(ref) == RUN and ref == parse_model_ref(f"runs:/{RUN}/model")


def test_a_file_named_like_a_run_id_is_a_checkpoint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / RUN).write_bytes(b"weights")
    assert parse_model_ref(RUN) == CheckpointRef(RUN)


def test_a_folder_with_members_json_is_an_ensemble(tmp_path: Path) -> None:
    (tmp_path / "members.json").write_text("{}")
    ref = parse_model_ref(str(tmp_path))
    assert ref == EnsembleRef(str(tmp_path)) and ref.members_file == tmp_path / "members.json"
    assert parse_model_ref(str(tmp_path / "elsewhere")) == CheckpointRef(
        str(tmp_path / "elsewhere")
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("runs:/", "expected runs:/RUN_ID/model"),
        ("runs://model", "expected runs:/RUN_ID/model"),
        ("models:/", "expected models:/NAME@ALIAS"),
        ("models:/just-a-name", "expected models:/NAME@ALIAS"),
        ("models:/name@", "expected models:/NAME@ALIAS"),
        ("models:/@champion", "expected models:/NAME@ALIAS"),
        ("models:/name/latest", "expected models:/NAME@ALIAS"),
        ("http://host/model.pt", "unknown scheme"),
        ("gs://bucket/model.pt", "unknown scheme"),
    ],
)
def test_a_malformed_reference_names_the_string_and_the_forms(text: str, why: str) -> None:
    with pytest.raises(ModelRefError, match=why) as caught:
        parse_model_ref(text)
    assert repr(text) in str(caught.value) and FORMS in str(caught.value), caught.value
    assert isinstance(caught.value, ValueError), "a bad value, as the CLI reports it"


def test_the_default_model_is_the_registered_champion_and_typed_refs_pass_through() -> None:
    assert str(DEFAULT_MODEL) == "models:/skin-lesion-classifier@champion"
    assert champion("other") == AliasRef("other", "champion")
    assert as_model_ref(DEFAULT_MODEL) is DEFAULT_MODEL
    assert as_model_ref("models:/a/1") == VersionRef("a", "1")
