"""Render the MLproject file from :class:`dfk.config.TrainConfig` and the ``dfk`` commands themselves.

Each entry point runs one ``dfk`` command (``python -m dfk ...``), or for a pipeline its command in
:mod:`dfk.cli.pipelines` (``python -m dfk.cli.pipelines ...``, whose ``main`` is ``dfk main`` itself); its
parameters' defaults, help and flags are read from that command (whose defaults come from
:data:`dfk.settings.SETTINGS`), so an entry point and the command it stands for cannot drift apart.
``python -m dfk.cli.mlproject > MLproject`` rewrites the file; a test checks the committed file matches.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfk.config import AUTO, TrainConfig, field_comments
from dfk.models import list_models
from dfk.settings import SETTINGS

#: TrainConfig fields every architecture entry point declares. Any other field still works:
#: ``mlflow run . -e cnn -P dropout=0.3`` reaches ``dfk train`` as ``--dropout 0.3``.
ENTRY_PARAMS = (
    "data_dir", "image_size", "batch_size", "epochs", "learning_rate", "patience", "warmup_epochs", "lr_patience",
    "weights",
    "fine_tune_at", "fine_tune_lr", "fine_tune_epochs", "augment", "target_fpr", "strategy", "mixed_precision", "seed",
    "faces",
)


@dataclass(frozen=True)
class Param:
    """One entry-point parameter and how it reaches the command line."""

    name: str
    default: Any  # None: required
    comment: str
    flag: str | None = None  # "--option"; "-P" for a TrainConfig field as key=value; None: positional
    number: bool = False
    path: bool = False  # mlflow run makes a relative path absolute against the folder it was started in

    def yaml(self) -> str:
        kind = "path" if self.path else "float" if self.number else "string"
        default = "" if self.default is None else f", default: \"{self.default}\""
        return f"{self.name}: {{type: {kind}{default}}}"

    def arg(self) -> str:
        if self.flag == "-P":
            return f"-P {self.name}={{{self.name}}}"
        return f"{self.flag} {{{self.name}}}" if self.flag else f"{{{self.name}}}"


_TRAIN_HINTS = typing.get_type_hints(TrainConfig)
_TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
_TRAIN_COMMENTS = field_comments(TrainConfig)
_UNSET = object()
#: Entry points that run a pipeline (``python -m dfk.cli.pipelines NAME``): its finished steps are reused.
PIPELINES = ("main", "sweep", "prepare", "generalization", "pretrain")


def train_param(name: str, flag: str = "-P") -> Param:
    """A TrainConfig field; a None default is spelled "auto"."""
    default = _TRAIN_DEFAULTS[name]
    number = _TRAIN_HINTS[name] in (int, float) and default is not None
    return Param(name, AUTO if default is None else default, _TRAIN_COMMENTS.get(name, ""), flag, number)


def _command(words: tuple[str, ...]):
    import typer

    if words[0] in PIPELINES:
        from dfk.cli.pipelines import app
    else:
        from dfk.cli import app

    command = typer.main.get_command(app)
    for word in words:
        command = command.commands[word]
    return command


def option(words: tuple[str, ...], name: str, as_name: str | None = None, default: Any = _UNSET,
           path: bool = False) -> Param:
    """The ``dfk`` command's own parameter ``name``: its default, help and flag, read from the command.

    A command's "not given" (None) is an empty string here; the commands read both alike.
    """
    p = {q.name: q for q in _command(words).params}[name]
    value = p.default if default is _UNSET else default
    if value is None and not p.required:
        value = ""
    value = str(value) if isinstance(value, Path) else str(value).lower() if isinstance(value, bool) else value
    flag = None if p.param_type_name == "argument" else max(p.opts, key=len)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return Param(as_name or name, value, p.help or "", flag, number, path)


def _commands() -> dict[str, tuple[tuple[str, ...], tuple[Param, ...]]]:
    """Entry points other than the architectures: name -> (dfk command words, parameters)."""
    main, evaluate, tune, gradcam = ("main",), ("evaluate",), ("tune",), ("gradcam",)
    sweep, prepare, generalization, pretrain = ("sweep",), ("prepare",), ("generalization",), ("pretrain",)
    return {
        "main": (main, (train_param("data_dir", "--data-dir"), option(main, "archs", default=SETTINGS.archs),
                        train_param("image_size"), train_param("epochs"), option(main, "perturb"), option(main, "force"))),
        "sweep": (sweep, (train_param("arch", "--arch"), train_param("data_dir", "--data-dir"),
                          *(option(sweep, n) for n in ("n_trials", "objective", "pruner", "study_name", "workers", "margin")),
                          train_param("epochs"), train_param("image_size"), option(sweep, "force"))),
        "prepare": (prepare, (option(prepare, "data_dir", default="builtin"), option(prepare, "out"),
                              option(prepare, "faces_from"), option(prepare, "force"))),
        "generalization": (generalization, (train_param("data_dir", "--data-dir"),
                                            *(option(generalization, n) for n in ("archs", "out", "photos", "test",
                                                                                  "leave_out_train", "starts", "few_shot")),
                                            train_param("epochs"), train_param("image_size"),
                                            option(generalization, "force"))),
        "pretrain": (pretrain, (*(option(pretrain, n) for n in ("archs", "train", "validation", "test", "image_size",
                                                                "out", "corpus")),
                                train_param("epochs"), option(pretrain, "force"))),
        "evaluate": (evaluate, (option(evaluate, "model", "model_uri", default=SETTINGS.champion_uri),
                                option(evaluate, "data_dir"), option(evaluate, "perturb"))),
        # No storage parameter: mlflow run logs every -P value as a run parameter, a password included,
        # so a shared storage reaches `dfk tune` as DFK_OPTUNA_STORAGE.
        "tune": (tune, (train_param("arch", "--arch"), train_param("data_dir", "--data-dir"),
                        *(option(tune, n) for n in ("n_trials", "objective", "pruner", "study_name", "space", "workers")),
                        train_param("epochs"), train_param("image_size"))),
        "compare": (("compare",), (option(("compare",), "experiment"), option(("compare",), "metric"))),
        "register": (("register",), tuple(option(("register",), n) for n in ("experiment", "metric", "name"))),
        "promote": (("promote",), tuple(option(("promote",), n) for n in ("name", "data_dir", "margin"))),
        "gradcam": (gradcam, (option(gradcam, "model", "model_uri", default=SETTINGS.champion_uri),
                              option(gradcam, "inputs", "images", path=True), option(gradcam, "out"),
                              option(gradcam, "layer"))),
        "app": (("app",), tuple(option(("app",), n, a) for n, a in (("model", "model_uri"), ("port", None),
                                                                   ("mlflow_ui", None)))),
        "synth": (("data", "synth"), (option(("data", "synth"), "out"),)),
    }


def entry_points() -> dict[str, tuple[tuple[str, ...], tuple[Param, ...]]]:
    """Every entry point: one per architecture, then the commands."""
    resume = option(("train",), "resume")
    archs = {arch: (("train", "--arch", arch), (*(train_param(n) for n in ENTRY_PARAMS), resume)) for arch in list_models()}
    return {**archs, **_commands()}


def render() -> str:
    lines = [
        "# Generated by `python -m dfk.cli.mlproject > MLproject` from dfk/config.py and dfk/settings.py; edit those.",
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
        module = "dfk.cli.pipelines" if words[0] in PIPELINES else "dfk"
        command = " ".join([f"python -m {module}", *words, *(p.arg() for p in params)])
        lines += [f"    command: \"{command}\"", ""]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
