"""Data preparation: synthesise a set, cut face crops from videos and photos, or take a folder -> inspect it.

Each step is a child run of the pipeline's run, reused when it finished before with the same inputs
(:mod:`dfk.runs.steps`); the inspection's reports are the artifacts of its run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dfk.config import BUILTIN_DATA, TrainConfig
from dfk.settings import SETTINGS


@dataclass
class PrepareResult:
    parent_run_id: str
    data_dir: str
    fingerprint: str
    leaks: list[str]  # cues that alone tell fakes from reals
    bad_files: int
    faces: dict | None = None  # with a faces spec: what the face step wrote (dfk.data.prepare.PrepareReport.summary)


def run_prepare(data_dir: str = BUILTIN_DATA, synth=None, out: str | Path | None = None,
                val_split: float = TrainConfig.val_split, experiment: str = SETTINGS.experiment,
                force: bool = False, faces=None) -> PrepareResult:
    """With ``synth`` (a :class:`dfk.data.synth.SynthSpec`), write that set into ``out`` first; with
    ``faces`` (a :class:`dfk.data.prepare.PrepareSpec`), cut the face crops of its videos and photos into
    its ``out`` first; then open the folder (``data_dir`` otherwise) and inspect it."""
    from dfk.data.scan import open_data
    from dfk.errors import UserError
    from dfk.runs.steps import pipeline
    from pipelines import steps

    if synth is not None and not out:
        raise UserError("name the folder to write the synthetic set into (--out)")
    if synth is not None:
        synth.validate()  # before any run
    if faces is not None:
        faces.validate()
    index = open_data(data_dir, val_split) if synth is None and faces is None else None  # a bad folder fails before any run
    prepared = None
    with pipeline("prepare", experiment, force) as p:
        if synth is not None:
            index = open_data(steps.synth(p, synth, out).outputs["path"], val_split)
        if faces is not None:
            prepared = steps.faces(p, faces)
            index = open_data(faces.out, val_split)
        report = steps.inspect(p, index)
        leaks = [c for c in report.outputs["leaks"].split(",") if c]
        summary = None
        if prepared is not None:
            import json

            summary = json.loads((Path(faces.out) / "faces.json").read_text())["report"]
            summary["run_id"], summary["reused"] = prepared.run_id, prepared.reused
        return PrepareResult(p.run_id, index.spec.data_dir, index.fingerprint, leaks, int(report.outputs["bad_files"]),
                             summary)
