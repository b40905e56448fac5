"""The MLproject and conda.yaml are derived from config.py and pyproject.toml; they must not drift."""

import tomllib
from pathlib import Path

import yaml

from dfk.cli.mlproject import ENTRY_PARAMS, render
from dfk.models import list_models

ROOT = Path(__file__).resolve().parents[1]


def test_mlproject_is_rendered_from_the_config():
    assert (ROOT / "MLproject").read_text() == render(), "run: python -m dfk.cli.mlproject > MLproject"


def test_every_architecture_is_an_entry_point_with_the_issue_parameters():
    spec = yaml.safe_load((ROOT / "MLproject").read_text())
    for arch in list_models():
        params = spec["entry_points"][arch]["parameters"]
        assert set(ENTRY_PARAMS) <= set(params)
        assert spec["entry_points"][arch]["command"].startswith(f"python -m dfk train --arch {arch} ")


def test_conda_env_has_the_same_requirements_as_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pip == deps
