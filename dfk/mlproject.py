"""Render the MLproject file from :class:`dfk.config.TrainConfig` and :data:`dfk.settings.SETTINGS`.

Each entry point runs one ``dfk`` command (``python -m dfk ...``), so an entry point and the
command it stands for cannot drift apart, and every default is the one the command itself has.
``python -m dfk.mlproject > MLproject`` rewrites the file; a test checks the committed file matches.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from dfk.config import AUTO, BUILTIN_DATA, TrainConfig, field_comments
from dfk.models import list_models
from dfk.settings import SETTINGS, Settings

#: TrainConfig fields every architecture entry point declares. Any other field still works:
#: ``mlflow run . -e cnn -P dropout=0.3`` reaches ``dfk train`` as ``--dropout 0.3``.
ENTRY_PARAMS = (
    "data_dir", "image_size", "batch_size", "epochs", "learning_rate", "patience", "warmup_epochs", "lr_patience",
    "weights",
    "fine_tune_at", "fine_tune_lr", "fine_tune_epochs", "augment", "target_fpr", "seed",
)

MODEL_URI_HELP = "runs:/RUN/model, models:/NAME@ALIAS or a local model folder"


@dataclass(frozen=True)
class Param:
    """One entry-point parameter and how it reaches the command line."""

    name: str
    default: Any  # None: required
    comment: str
    flag: str | None = None  # "--option"; "-P" for a TrainConfig field as key=value; None: positional
    number: bool = False

    def yaml(self) -> str:
        kind = "float" if self.number else "string"
        default = "" if self.default is None else f", default: \"{self.default}\""
        return f"{self.name}: {{type: {kind}{default}}}"

    def arg(self) -> str:
        if self.flag == "-P":
            return f"-P {self.name}={{{self.name}}}"
        return f"{self.flag} {{{self.name}}}" if self.flag else f"{{{self.name}}}"


_TRAIN_HINTS = typing.get_type_hints(TrainConfig)
_TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
_TRAIN_COMMENTS = field_comments(TrainConfig)
_SETTING_COMMENTS = field_comments(Settings)


def train_param(name: str, flag: str = "-P") -> Param:
    """A TrainConfig field; a None default is spelled "auto"."""
    default = _TRAIN_DEFAULTS[name]
    number = _TRAIN_HINTS[name] in (int, float) and default is not None
    return Param(name, AUTO if default is None else default, _TRAIN_COMMENTS.get(name, ""), flag, number)


def setting(name: str, flag: str | None, field: str) -> Param:
    """A command option whose default and comment are a field of :class:`~dfk.settings.Settings`."""
    default = getattr(SETTINGS, field)
    return Param(name, default, _SETTING_COMMENTS[field], flag, isinstance(default, (int, float)))


def model_uri() -> Param:
    return Param("model_uri", SETTINGS.champion_uri, MODEL_URI_HELP)


#: Entry points other than the architectures: name -> (dfk command words, parameters).
COMMANDS: dict[str, tuple[tuple[str, ...], tuple[Param, ...]]] = {
    "main": (("main",), (
        train_param("data_dir", "--data-dir"), setting("archs", "--archs", "archs"),
        train_param("image_size"), train_param("epochs"), setting("perturb", "--perturb", "perturb"),
    )),
    "evaluate": (("evaluate",), (
        model_uri(),
        Param("data_dir", "", "Folder to score; empty: the data the model was trained on, split as its run split it; "
              f"{BUILTIN_DATA}: the built-in set.", "--data"),
        Param("perturb", "none", "Perturbations to score under: all, default, none or e.g. jpeg:50,blur.", "--perturb"),
    )),
    "tune": (("tune",), (
        train_param("arch", "--arch"), train_param("data_dir", "--data-dir"),
        setting("n_trials", "--n-trials", "n_trials"), setting("objective", "--objective", "objective"),
        setting("pruner", "--pruner", "pruner"),
        Param("study_name", "", "Study to resume or start; empty: a new one.", "--study-name"),
        Param("storage", "", "Optuna storage URL; empty: optuna.db beside the MLflow tracking store.", "--storage"),
        Param("space", "", "YAML file overriding the search space; empty keeps the default.", "--space"),
        Param("workers", 1, "Processes working on the same study.", "--workers", number=True),
        train_param("epochs"), train_param("image_size"),
    )),
    "compare": (("compare",), (
        Param("experiment", "", "Experiment whose training runs to compare; empty: every experiment.", "--experiment"),
        setting("metric", "--metric", "select_metric"),
    )),
    "register": (("register",), (
        Param("experiment", "", "Experiment whose finished runs compete; empty: every experiment.", "--experiment"),
        setting("metric", "--metric", "select_metric"), setting("name", "--name", "model_name"),
    )),
    "promote": (("promote",), (
        setting("name", "--name", "model_name"),
        Param("data_dir", "", "Folder whose test split decides; empty: the challenger's own training data, split as "
              f"its run split it; {BUILTIN_DATA}: the built-in set.", "--data-dir"),
        setting("margin", "--margin", "promotion_margin"),
    )),
    "gradcam": (("gradcam",), (
        model_uri(), Param("images", None, "An image file or a folder of images."),
        setting("out", "--out", "gradcam_out"),
        Param("layer", "", "Target layer; empty: the last convolutional map of at least 8x8.", "--layer"),
    )),
    "app": (("app",), (
        model_uri(), setting("port", "--port", "app_port"),
        Param("mlflow_ui", "", "MLflow UI address for run links; empty: the tracking URI when it is http.",
              "--mlflow-ui"),
    )),
    "synth": (("data", "synth"), (setting("out", None, "synth_out"),)),
}


def entry_points() -> dict[str, tuple[tuple[str, ...], tuple[Param, ...]]]:
    """Every entry point: one per architecture, then the commands."""
    archs = {arch: (("train", "--arch", arch), tuple(train_param(n) for n in ENTRY_PARAMS)) for arch in list_models()}
    return {**archs, **COMMANDS}


def render() -> str:
    lines = [
        "# Generated by `python -m dfk.mlproject > MLproject` from dfk/config.py and dfk/settings.py; edit those.",
        "name: dfk",
        "",
        "conda_env: conda.yaml",
        "",
        "entry_points:",
    ]
    for name, (words, params) in entry_points().items():
        lines += [f"  {name}:", "    parameters:"]
        for p in params:
            lines += [f"      # {p.comment}", f"      {p.yaml()}"]
        command = " ".join(["python -m dfk", *words, *(p.arg() for p in params)])
        lines += [f"    command: \"{command}\"", ""]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
