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
    """conda.yaml is pyproject's base requirements plus its `cpu` extra (the TensorFlow build for x86_64)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pip == project["dependencies"] + project["optional-dependencies"]["cpu"]
    # The line its comment says to swap in on a GPU machine is the `gpu` extra, verbatim.
    (gpu,) = project["optional-dependencies"]["gpu"]
    assert f'- "{gpu}"' in (ROOT / "conda.yaml").read_text()


def test_one_tensorflow_build_per_install():
    """tensorflow-cpu and tensorflow install the same package: no extra set a user or CI installs brings both."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(r.startswith("tensorflow-cpu") for r in base)  # else the gpu extra could not replace it
    assert "dfk[cpu,dev]" in extras["test"] and not any("tensorflow" in r for r in extras["dev"])
    assert extras["gpu"][0].startswith("tensorflow[and-cuda]") and extras["cpu"][0].startswith("tensorflow-cpu")
