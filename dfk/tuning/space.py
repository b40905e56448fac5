"""The search space of a sweep: defaults per architecture, a YAML override, and sampling a trial."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from dfk.config import TrainConfig
from dfk.errors import UserError

#: Per-epoch Keras metrics a sweep can optimise.
OBJECTIVES = ("val_auc", "val_accuracy", "val_loss", "val_precision", "val_recall")
PRUNERS = ("median", "hyperband", "none")
#: Parameters a search space may not touch (they define the sweep, not a trial).
FIXED = ("arch", "data_dir", "seed", "val_split", "gradcam_images")

#: The default space. learning rate log-uniform; the rest the knobs users ask about first.
BASE_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "dropout": {"type": "float", "low": 0.1, "high": 0.6},
    "dense_units": {"type": "categorical", "choices": [128, 256, 512]},
    "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
    "augment": {"type": "categorical", "choices": ["flip", "flip,jpeg", "flip,jpeg,blur", "flip,rotation,zoom,brightness"]},
}
#: Added for architectures with a pretrained backbone.
BACKBONE_SPACE: dict[str, dict[str, Any]] = {
    "fine_tune_at": {"type": "int", "low": 0, "high": 60, "step": 10},
}


def default_space(arch: str) -> dict[str, dict[str, Any]]:
    from dfk.models import get_spec

    space = dict(BASE_SPACE)
    if get_spec(arch).pretrained:
        space.update(BACKBONE_SPACE)
    return space


def load_space(arch: str, path: str | None) -> dict[str, dict[str, Any]]:
    """The default space for ``arch`` with the YAML file's entries replacing (or, as null, removing) keys."""
    space = default_space(arch)
    if not path:
        return space
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"cannot read search space {path}: {exc.strerror}") from None
    try:
        override = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"search space {path} is not valid YAML{where}") from None
    if not isinstance(override, dict):
        raise UserError(f"search space {path} must map parameter names to ranges, e.g. dropout: {{type: float, low: 0.1, high: 0.5}}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, spec in override.items():
        if name not in fields or name in FIXED:
            tunable = sorted(fields - set(FIXED))
            raise UserError(f"search space {path}: unknown parameter {name!r}; tunable: {', '.join(tunable)}")
        if spec is None:
            space.pop(name, None)
            continue
        _check_spec(path, name, spec)
        space[name] = spec
    return space


def _check_spec(path: str, name: str, spec: Any) -> None:
    kinds = ("float", "int", "categorical")
    if not isinstance(spec, dict) or spec.get("type") not in kinds:
        raise UserError(f"search space {path}: {name} needs type: float, int or categorical")
    if spec["type"] == "categorical":
        if not isinstance(spec.get("choices"), list) or not spec["choices"]:
            raise UserError(f"search space {path}: {name} needs a non-empty list of choices")
        return
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"search space {path}: {name} needs numeric low and high") from None
    if not low < high:
        raise UserError(f"search space {path}: {name} needs low < high")
    if spec.get("log") and low <= 0:
        raise UserError(f"search space {path}: {name} is log-uniform, so low must be above 0")


def sample(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for name, spec in space.items():
        if spec["type"] == "float":
            out[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
        elif spec["type"] == "int":
            out[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)),
                                          log=bool(spec.get("log")))
        else:
            out[name] = trial.suggest_categorical(name, spec["choices"])
    return out
