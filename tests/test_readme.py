"""Every command the README and docs/ show parses as typed.

`dfk ...` lines are parsed by the real command line (every option and argument checked, nothing
run); `mlflow run . -e NAME -P key=value` lines must name an entry point of the MLproject and
parameters it declares or training takes. Running them is the job of the workflow tests
(tests/test_mlproject_flow.py, tests/test_pipelines.py) and of a fresh clone before a release.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from dfk.cli import app
from dfk.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MLPROJECT = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _commands() -> list[tuple[str, str]]:
    """(page, command line) for every shell line in a ```bash block, continuation lines joined."""
    out = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                line = re.sub(r"^(\w+=\S+ )+", "", line)  # VAR=value prefixes
                line = re.sub(r"^(\.venv/bin/|python -m )", "", line)
                if line.startswith(("dfk ", "mlflow run ")):
                    out.append((page.name, line))
    return out


COMMANDS = _commands()


def test_the_pages_show_commands():
    pages = {p for p, _ in COMMANDS}
    assert "README.md" in pages and len(COMMANDS) > 30


def _parse_dfk(words: list[str]) -> None:
    command = typer.main.get_command(app)
    ctx = command.make_context("dfk", list(words), resilient_parsing=False)
    while hasattr(command, "get_command") and ctx._protected_args + ctx.args:
        rest = ctx._protected_args + ctx.args
        name, rest = rest[0], rest[1:]
        command = command.get_command(ctx, name)
        assert command is not None, f"no command {name!r}"
        ctx = command.make_context(name, rest, parent=ctx, resilient_parsing=False)
    extra = list(ctx.args)
    while extra:  # training parameters given as --key value reach TrainConfig
        key = extra.pop(0)
        assert key.startswith("--") and key[2:].replace("-", "_") in TRAIN_FIELDS, f"unexpected {key!r}"
        extra.pop(0)


@pytest.mark.parametrize("page,line", COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in COMMANDS])
def test_a_shown_command_parses_as_typed(page, line):
    words = shlex.split(line.split(" && ")[0].split(" | ")[0].split(" > ")[0])
    if words[0] == "dfk":
        _parse_dfk(words[1:])
        return
    entry = "main"
    if "-e" in words:
        entry = words[words.index("-e") + 1]
    assert entry in MLPROJECT, f"{page}: no entry point {entry!r} in the MLproject"
    declared = set(MLPROJECT[entry].get("parameters", {}))
    for i, word in enumerate(words):
        if word == "-P":
            key = words[i + 1].split("=", 1)[0]
            assert key in declared or key in TRAIN_FIELDS, f"{page}: {entry} takes no parameter {key!r}"
