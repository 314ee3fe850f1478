"""Model references, parsed once where they come in (a CLI option, a flow parameter) and typed after.

A reference names one of: a checkpoint file (a path or an s3:// URI), an ensemble folder (its
members.json), an MLflow run's model (`runs:/RUN_ID/PATH`, or a bare run id), a registered model
(`models:/NAME@ALIAS`, `models:/NAME/VERSION`) or a logged model (`models:/m-ID`). Each prints as
the string that parses back to it. No MLflow here: resolving a reference is `skin.track.tracking`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from skin.base.config import REGISTERED_MODEL

RUN_ID = re.compile(r"[0-9a-f]{32}")  # an MLflow run id
MEMBERS_FILE = "members.json"  # an ensemble's list of members (skin.search.ensemble)
CHAMPION = "champion"  # the registry alias that prediction serves unless told
FORMS = (
    "a checkpoint file (path or s3:// URI), an ensemble folder (with members.json),"
    " runs:/RUN_ID/model, models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-ID,"
    " or a bare MLflow run id"
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/")  # one letter is a Windows drive, not a scheme


class ModelRefError(ValueError):
    """A model reference that matches none of the accepted forms; names the string and them."""


@dataclass(frozen=True)
class ModelRef:
    """Any model reference; `ModelRef.parse` gives the right kind, `str()` gives it back."""

    @property
    def is_mlflow(self) -> bool:
        """Whether MLflow resolves it (a run, a registered or a logged model)."""
        return False

    @property
    def uri(self) -> str:
        """The reference in full (a bare run id's is `runs:/RUN_ID/model`)."""
        return str(self)

    @staticmethod
    def parse(text: str) -> ModelRef:
        return parse_model_ref(text)


@dataclass(frozen=True)
class CheckpointRef(ModelRef):
    """One checkpoint file: a local path or an s3:// URI, as given."""

    path: str

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class EnsembleRef(ModelRef):
    """An ensemble: a folder holding members.json, or that file, as given."""

    path: str

    def __str__(self) -> str:
        return self.path

    @property
    def members_file(self) -> Path:
        path = Path(self.path).expanduser()
        return path if path.name == MEMBERS_FILE else path / MEMBERS_FILE


@dataclass(frozen=True)
class RunRef(ModelRef):
    """A run's model, `runs:/RUN_ID/PATH`; a bare run id means `runs:/RUN_ID/model`."""

    run_id: str
    path: str = "model"
    bare: bool = field(default=False, compare=False)  # given as the run id alone: prints so

    def __str__(self) -> str:
        return self.run_id if self.bare else self.uri

    @property
    def uri(self) -> str:
        return f"runs:/{self.run_id}/{self.path}" if self.path else f"runs:/{self.run_id}"

    @property
    def is_mlflow(self) -> bool:
        return True


@dataclass(frozen=True)
class AliasRef(ModelRef):
    """A registered model's version by alias: `models:/NAME@ALIAS`."""

    name: str
    alias: str

    def __str__(self) -> str:
        return f"models:/{self.name}@{self.alias}"

    @property
    def is_mlflow(self) -> bool:
        return True


@dataclass(frozen=True)
class VersionRef(ModelRef):
    """A registered model's version by number: `models:/NAME/VERSION`."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def is_mlflow(self) -> bool:
        return True


@dataclass(frozen=True)
class LoggedModelRef(ModelRef):
    """An MLflow logged model by id: `models:/m-ID`."""

    model_id: str

    def __str__(self) -> str:
        return f"models:/{self.model_id}"

    @property
    def is_mlflow(self) -> bool:
        return True


def champion(name: str = REGISTERED_MODEL) -> AliasRef:
    """The version a registered model serves unless told otherwise: its champion."""
    return AliasRef(name, CHAMPION)


DEFAULT_MODEL = (
    champion()
)  # what prediction serves unless told: models:/skin-lesion-classifier@champion


def parse_model_ref(text: str) -> ModelRef:
    """The reference `text` names; a `ModelRefError` naming it and the accepted forms if none."""
    if not isinstance(text, str) or not text.strip():
        raise ModelRefError(f"model reference {text!r} is empty; use {FORMS}")
    if text.startswith("runs:/"):
        return _run(text)
    if text.startswith("models:/"):
        return _registered(text)
    if text.startswith("s3://"):
        return CheckpointRef(text)
    if _SCHEME.match(text):
        raise ModelRefError(f"model reference {text!r} has an unknown scheme; use {FORMS}")
    if RUN_ID.fullmatch(text) and not Path(text).exists():
        return RunRef(text, bare=True)
    path = Path(text).expanduser()
    if path.name == MEMBERS_FILE or (path / MEMBERS_FILE).is_file():
        return EnsembleRef(text)
    return CheckpointRef(text)


def as_model_ref(ref: ModelRef | str) -> ModelRef:
    """`ref` as a typed reference: parsed when it is still a string (a Python caller's)."""
    return ref if isinstance(ref, ModelRef) else parse_model_ref(ref)


def _run(text: str) -> RunRef:
    run_id, _, path = text.removeprefix("runs:/").partition("/")
    if not run_id:
        raise ModelRefError(f"model reference {text!r}: expected runs:/RUN_ID/model; use {FORMS}")
    return RunRef(run_id, path)


def _registered(text: str) -> ModelRef:
    rest = text.removeprefix("models:/").strip("/")
    if rest.startswith("m-") and "/" not in rest and "@" not in rest:
        return LoggedModelRef(rest)
    name, at, alias = rest.rpartition("@")
    if at and name and alias and "/" not in alias:
        return AliasRef(name, alias)
    name, slash, version = rest.rpartition("/")
    if slash and name and version.isdigit():
        return VersionRef(name, version)
    raise ModelRefError(
        f"model reference {text!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION"
        f" (a number); use {FORMS}"
    )
