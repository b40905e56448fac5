"""Sweep -> register its best trial -> promote it behind the gate.

Each step is a child run of the pipeline's run, reused when it finished before with the same inputs
(:mod:`dfk.runs.steps`): run again with nothing changed, no trial runs again.
"""

from __future__ import annotations

from dataclasses import dataclass

from dfk.settings import SETTINGS


@dataclass
class SweepPipelineResult:
    parent_run_id: str
    sweep_run_id: str  # the sweep's own parent run, whose children are the trials
    best_run_id: str
    registered_version: str
    champion_version: str
    promoted: bool


def run_sweep(spec, experiment: str = SETTINGS.experiment, margin: float = SETTINGS.promotion_margin,
              force: bool = False) -> SweepPipelineResult:
    """Run the sweep ``spec`` (:class:`dfk.tuning.study.SweepSpec`), register the best of its trials
    and promote it, judged on the sweep's own data."""
    from dfk.data.scan import DataSpec
    from dfk.runs.steps import pipeline
    from pipelines import steps

    spec.validate()  # a bad spec fails before any run, and the key holds the direction it resolves to
    index = DataSpec.of_config(spec.base).open()
    with pipeline("sweep", experiment, force) as p:
        sweep = steps.tune(p, spec, index)
        registered = steps.register(p, index.fingerprint, parent=sweep.outputs["parent_run_id"])
        decision = steps.promote(p, registered.outputs["version"], index.fingerprint, margin=margin)
        return SweepPipelineResult(p.run_id, sweep.outputs["parent_run_id"], registered.outputs["trained_run_id"],
                                   registered.outputs["version"], decision.outputs["champion"],
                                   decision.outputs["promoted"] == "True")
