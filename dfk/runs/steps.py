"""Pipeline steps as MLflow runs, and the reuse of a step that already finished with the same inputs.

A pipeline (:mod:`pipelines`) is one parent run; each of its steps is a child run tagged with its
entry point's name and a key: the digest of the entry point, its parameters, the fingerprint of the
data it reads (:attr:`dfk.data.scan.DatasetIndex.fingerprint`) and the version of dfk's code
(:func:`code_version`). Before a step runs, the pipeline's experiment is searched for a FINISHED run
with that key; if there is one, the step is not run again: its run id and recorded outputs stand in
for it, and one line says so. So a pipeline run again after a failure at step k resumes at step k,
and one run again with nothing changed trains nothing. ``force`` redoes every step.

This is MLflow's ``examples/multistep_workflow`` (``_already_ran``), with the key in one tag so that
one ``search_runs`` filter finds the twin, and a code version that needs no git checkout.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

#: Tag naming a step run's entry point (``srm``, ``register``, ...).
STEP = "dfk.step"
#: Tag holding the step's key (:attr:`StepKey.digest`): what the search for a finished twin matches.
KEY = "dfk.step.key"
#: Tags holding the key's parts, for a reader of the run.
CODE, DATA, PIPELINE = "dfk.step.code", "dfk.step.data", "dfk.step.pipeline"
#: Prefix of the tags holding a step's outputs (a registered version, an evaluation run id, ...).
OUTPUT = "dfk.step.out."
#: Tags on a pipeline's parent run: the entry points of the steps it ran and of those it reused.
RAN, REUSED = "dfk.steps.ran", "dfk.steps.reused"


@functools.lru_cache(maxsize=None)
def code_version(package: str = "dfk") -> str:
    """Digest of the package's source files (``*.py`` and the page it serves), by relative path.

    The library's source, not the pipelines': what a step does is a dfk call, the pipelines only wire
    steps together. Works from a wheel as from a checkout, without git. Computed once per process:
    the code a process runs is the code it had when it started, whatever is edited meanwhile."""
    import importlib

    root = Path(importlib.import_module(package).__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".html") and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass(frozen=True)
class StepKey:
    """What makes two runs of a step the same: entry point, parameters, data and code."""

    entry_point: str
    params: Mapping[str, str]
    data: str = ""  # fingerprint(s) of the data the step reads
    code: str = ""

    @classmethod
    def of(cls, entry_point: str, params: Mapping[str, Any], data: str = "") -> "StepKey":
        return cls(entry_point, {k: _text(v) for k, v in sorted(params.items())}, data, code_version())

    @property
    def digest(self) -> str:
        blob = json.dumps([self.entry_point, dict(self.params), self.data, self.code], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def tags(self) -> dict[str, str]:
        return {STEP: self.entry_point, KEY: self.digest, CODE: self.code, DATA: self.data}


@dataclass
class Step:
    """One step of a pipeline run: its run (earlier and reused, or new) and what it recorded."""

    entry_point: str
    run_id: str
    outputs: dict[str, str] = field(default_factory=dict)
    reused: bool = False


def outputs_of(run) -> dict[str, str]:
    return {k[len(OUTPUT):]: v for k, v in run.data.tags.items() if k.startswith(OUTPUT)}


def finished_twin(key: StepKey, experiment_id: str, usable: Callable[[Step], bool] | None = None):
    """The newest FINISHED run of ``key`` in the experiment whose outputs are still ``usable``, or None."""
    import mlflow

    runs = mlflow.MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{KEY}` = '{key.digest}' and attributes.status = 'FINISHED'",
        order_by=["attributes.end_time DESC"], max_results=20)
    for run in runs:
        if usable is None or usable(Step(key.entry_point, run.info.run_id, outputs_of(run), True)):
            return run
    return None


def finished_at(run) -> str:
    return datetime.fromtimestamp((run.info.end_time or 0) / 1000).strftime("%Y-%m-%d %H:%M:%S")


class Pipeline:
    """The parent run of one pipeline run; :meth:`step` and :meth:`step_run` add its steps."""

    def __init__(self, name: str, run_id: str, experiment: str, force: bool = False) -> None:
        import mlflow

        self.name, self.run_id, self.experiment, self.force = name, run_id, experiment, force
        self.experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
        self.steps: list[Step] = []

    def say(self, line: str) -> None:
        print(f"[dfk] {self.name}: {line}", flush=True)

    def _reuse(self, key: StepKey, usable: Callable[[Step], bool] | None) -> Step | None:
        if self.force:
            return None
        twin = finished_twin(key, self.experiment_id, usable)
        if twin is None:
            return None
        self.say(f"reusing {key.entry_point} run {twin.info.run_id} (finished {finished_at(twin)})")
        return self._add(Step(key.entry_point, twin.info.run_id, outputs_of(twin), reused=True))

    def _add(self, step: Step) -> Step:
        self.steps.append(step)
        return step

    def _tags(self, key: StepKey) -> dict[str, str]:
        return {**key.tags(), PIPELINE: self.name, "mlflow.parentRunId": self.run_id}

    def step(self, entry_point: str, params: Mapping[str, Any], body: Callable[[str], Mapping[str, Any] | None],
             data: str = "", usable: Callable[[Step], bool] | None = None) -> Step:
        """Run ``body(run_id)`` in a new child run named ``entry_point``, unless a finished twin is reused.

        ``body`` returns the step's outputs, kept as tags so that a reuse returns them too (and may
        log artifacts to its run); ``usable(step)`` may reject a twin whose outputs are gone (a
        deleted model version, a removed folder)."""
        import mlflow

        from dfk.runs import tracking

        key = StepKey.of(entry_point, params, data)
        if reused := self._reuse(key, usable):
            return reused
        self.say(f"running {entry_point}")
        client = mlflow.MlflowClient()
        run_id = client.create_run(self.experiment_id, run_name=entry_point,
                                   tags={**tracking.standard_tags(), **self._tags(key)}).info.run_id
        with tracking.ending(run_id):  # FAILED on an error, so the next run of the pipeline redoes it
            tracking.log_params_once(key.params, run_id)
            outputs = {k: _text(v) for k, v in (body(run_id) or {}).items()}
            for k, v in outputs.items():  # before the run ends: a FINISHED step always has its outputs
                client.set_tag(run_id, OUTPUT + k, v)
        return self._add(Step(entry_point, run_id, outputs))

    def step_run(self, entry_point: str, params: Mapping[str, Any], start: Callable[[dict[str, str]], str],
                 data: str = "", usable: Callable[[Step], bool] | None = None) -> Step:
        """A step whose library call makes its own run (training): ``start(tags)`` makes a child run
        of the pipeline carrying ``tags`` (the step's key and its parent) and returns its id; that
        run is the step's run, reused as a whole."""
        key = StepKey.of(entry_point, params, data)
        if reused := self._reuse(key, usable):
            return reused
        self.say(f"running {entry_point}")
        return self._add(Step(entry_point, start(self._tags(key))))

    def record(self) -> None:
        """Tag the parent run with the steps it ran and those it reused."""
        import mlflow

        client = mlflow.MlflowClient()
        client.set_tag(self.run_id, RAN, ",".join(s.entry_point for s in self.steps if not s.reused))
        client.set_tag(self.run_id, REUSED, ",".join(s.entry_point for s in self.steps if s.reused))


@contextlib.contextmanager
def pipeline(name: str, experiment: str, force: bool = False) -> Iterator[Pipeline]:
    """The parent run of pipeline ``name`` (under ``mlflow run``: the entry point's run), ended
    FINISHED, FAILED on an error, KILLED on Ctrl-C; its steps' runs are its children."""
    from dfk.runs import tracking

    # "sweep": "parent" keeps it out of views of single runs, as a sweep's parent is.
    with tracking.parent_run(experiment, name, {"sweep": "parent", "pipeline": name}) as (run_id, experiment):
        p = Pipeline(name, run_id, experiment, force)
        try:
            yield p
        finally:
            p.record()
