"""Per-epoch checkpoints of a training run, and resuming a run from them (``dfk train --resume``).

Every epoch of ``fit`` ends with Keras' ``BackupAndRestore`` writing the model's and the optimizer's
variables and the epoch reached, and with :class:`RunBackup` adding what that leaves out: each
epoch's logs (the learning curves so far) and the counters of early stopping and the learning-rate
schedule. The best weights so far (``ModelCheckpoint``) live beside them. A run killed at any point
resumes at the start of the epoch it was in: the same MLflow run, the same optimizer step, the same
patience left, at most one epoch redone, and one metric point per epoch per curve (an epoch backed up
but not yet logged when the process died is logged on resume).

The folder is ``<store folder>/checkpoints/<run id>`` for a local store (beside ``mlflow.db``) and
dfk's cache folder for a tracking server, kept until the run ends FINISHED.

:class:`Checkpoints` is the one object training asks about all this: whether the run is fresh or
resumed, where its best weights are, which epochs a phase still has to run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dfk.errors import UserError

#: Folder (beside the tracking store) that holds one checkpoint folder per unfinished run.
CHECKPOINTS = "checkpoints"
#: The state file :class:`RunBackup` writes after Keras' own backup, every epoch.
STATE_FILE = "state.json"
#: Attributes of the callbacks that carry on across a resume (early stopping, LR schedule).
CARRIED = ("wait", "best", "best_epoch", "cooldown_counter")


def checkpoint_dir(run_id: str) -> Path:
    from dfk.runs.tracking import beside_store

    return beside_store() / CHECKPOINTS / run_id


@dataclass
class State:
    """What a run's checkpoint folder says about its training."""

    epochs: dict[int, dict[str, float]] = field(default_factory=dict)  # epoch index -> its logs
    reached: dict[str, int] = field(default_factory=dict)  # fit phase -> epochs its backed-up weights have had
    phases_done: dict[str, int] = field(default_factory=dict)  # finished phase -> epochs it ended at
    callbacks: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # phase -> callback -> counters

    @classmethod
    def load(cls, folder: Path) -> "State":
        path = folder / STATE_FILE
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
            return cls({int(k): v for k, v in raw["epochs"].items()}, raw["reached"], raw["phases_done"], raw["callbacks"])
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"the checkpoint state {path} cannot be read ({exc}); train the run again") from None

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps({"epochs": self.epochs, "reached": self.reached, "phases_done": self.phases_done,
                                   "callbacks": self.callbacks}))
        os.replace(tmp, folder / STATE_FILE)  # atomic: a kill leaves the old state or the new one

    def history(self) -> dict[str, list[float]]:
        """The learning curves of the epochs done, as Keras' ``History`` has them."""
        out: dict[str, list[float]] = {}
        for epoch in sorted(self.epochs):
            for k, v in self.epochs[epoch].items():
                out.setdefault(k, []).append(v)
        return out

    def next_epoch(self, first: int) -> int:
        """The first epoch of a phase starting at ``first`` that the checkpoint has not logged."""
        return max([first, *(e + 1 for e in self.epochs if e >= first)])


#: The best weights so far, and where ``ModelCheckpoint`` writes a new best before it replaces them.
BEST, BEST_PENDING = "best.weights.h5", "best.pending.weights.h5"


def run_backup(folder: Path, phase: str, state: State, carried: list):
    """The Keras callback that backs up (and on a resume restores) one ``fit`` phase of a run.

    Place it after ``ModelCheckpoint`` (writing to :data:`BEST_PENDING`) and the callbacks in
    ``carried`` (their counters are reset by their own ``on_train_begin`` and saved after their
    ``on_epoch_end``), and before the metric logger. Every file is replaced atomically, weights
    first and the state last, so a kill at any point leaves a checkpoint that resumes at most one
    epoch back."""
    from keras.callbacks import BackupAndRestore

    class RunBackup(BackupAndRestore):
        def __init__(self) -> None:
            super().__init__(str(folder / phase), delete_checkpoint=False)

        def on_train_begin(self, logs=None):
            self.model._initial_epoch = None  # Keras leaves an earlier phase's restored epoch on the model
            try:
                super().on_train_begin(logs)  # this phase's weights and optimizer state, if backed up
            except (OSError, ValueError) as exc:
                raise UserError(f"the checkpoint in {folder / phase} cannot be read ({exc}); train the run again") from None
            if phase in state.reached:
                self.model._initial_epoch = state.reached[phase]
            for cb in carried:
                for attr, value in state.callbacks.get(phase, {}).get(type(cb).__name__, {}).items():
                    setattr(cb, attr, value)

        def _save_model(self):
            Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
            tmp = f"{self._weights_path}.tmp.weights.h5"
            self.model.save_weights(tmp, overwrite=True)
            os.replace(tmp, self._weights_path)

        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)  # the weights, first
            if (folder / BEST_PENDING).exists():
                os.replace(folder / BEST_PENDING, folder / BEST)
            state.epochs[epoch] = {k: float(v) for k, v in (logs or {}).items()}
            state.callbacks[phase] = {type(cb).__name__: {a: _plain(getattr(cb, a)) for a in CARRIED if hasattr(cb, a)}
                                      for cb in carried}
            state.reached[phase] = epoch + 1
            if self.model.stop_training:  # early stopping has decided: a resume does not train on
                state.phases_done[phase] = epoch + 1
            state.save(folder)  # then the state that matches them

    return RunBackup()


def _plain(value):
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def end_phase(folder: Path, state: State, phase: str, epochs: int) -> None:
    """Record that ``phase`` is over at ``epochs`` (early stopping included): a resume skips it."""
    state.phases_done[phase] = epochs
    state.save(folder)


def discard(run_id: str) -> None:
    folder = checkpoint_dir(run_id)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()  # the last one: no empty checkpoints/ left beside the store
    except OSError:
        pass


class Checkpoints:
    """A run's checkpoints as the steps of training use them, fresh or resumed: the one place that
    knows whether the run resumes, so that no step asks.

    ``resume_run_id`` continues that killed run from its checkpoint (its config from
    :func:`resumable`); else the run is fresh, backed up every epoch when ``enabled`` (a sweep's trials
    are not: a stopped trial is run again, not resumed)."""

    def __init__(self, enabled: bool = True, resume_run_id: str | None = None) -> None:
        self.resume_run_id = resume_run_id
        self.enabled = enabled or bool(resume_run_id)
        self.run_id = ""  # set by begin(), as are the two below
        self.folder: Path | None = None  # None when not backed up
        self.state = State()
        self.best = Path(BEST)

    def use_experiment(self, experiment: str | None) -> None:
        """Select the run's experiment: a resumed run's own, whatever this command would pick."""
        import mlflow

        from dfk.runs import tracking

        if self.resume_run_id:
            mlflow.set_experiment(experiment_id=mlflow.get_run(self.resume_run_id).info.experiment_id)
        else:
            tracking.use_experiment(experiment)

    def begin(self, active, scratch: Path, log_inputs: Callable[[], None]) -> None:
        """Take up the checkpoint of the active run (``scratch`` holds the best weights of a run without
        one). A fresh run logs its inputs (``log_inputs``); a resumed one the epochs its checkpoint
        holds but its curves lack, and counts the resume in the tag ``dfk.resumed``."""
        import mlflow

        self.run_id = run_id = active.info.run_id
        self.folder = checkpoint_dir(run_id) if self.enabled else None
        self.best = (self.folder or scratch) / BEST  # written through BEST_PENDING when backed up
        if not self.resume_run_id:
            log_inputs()
            return
        self.state = State.load(self.folder)
        redone = self._log_missing_epochs(run_id)
        print(f"[dfk] resuming run {run_id} after epoch {len(self.state.epochs)}"
              + (f" ({redone} epoch(s) logged from the checkpoint)" if redone else ""), flush=True)
        mlflow.set_tag("dfk.resumed", str(int(active.data.tags.get("dfk.resumed", "0")) + 1))

    def _log_missing_epochs(self, run_id: str) -> int:
        """Log the epochs the checkpoint holds but the run's curves lack (the process died between the
        backup and the metric write); the number logged."""
        import mlflow

        from dfk.training.fit import log_epoch

        logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "loss")}
        missing = [e for e in sorted(self.state.epochs) if e not in logged]
        for epoch in missing:
            log_epoch(epoch, self.state.epochs[epoch])
        return len(missing)

    def history(self) -> dict[str, list[float]]:
        """The learning curves of the epochs done before this process (none for a fresh run)."""
        return self.state.history()

    def span(self, phase: str, first: int, epochs: int) -> tuple[int, int]:
        """``(first epoch to run, epoch to end at)`` of a phase planned as ``epochs`` from ``first``:
        after a resume, past the epochs done, and a phase the checkpoint says is over runs none."""
        return self.state.next_epoch(first), self.state.phases_done.get(phase, first + epochs)

    def best_weights(self, best_so_far: float):
        """Keras' ``ModelCheckpoint`` of the best weights (lowest val_loss), beating ``best_so_far``."""
        from keras.callbacks import ModelCheckpoint

        return ModelCheckpoint(str(self.folder / BEST_PENDING if self.folder else self.best), monitor="val_loss",
                               save_best_only=True, save_weights_only=True,
                               initial_value_threshold=best_so_far if math.isfinite(best_so_far) else None)

    def backup(self, phase: str, carried: list) -> list:
        """The callbacks that back up each epoch of ``phase`` (:func:`run_backup`); none when not backed up."""
        return [run_backup(self.folder, phase, self.state, carried)] if self.folder else []

    def phase_over(self, phase: str, first: int, trained: int) -> int:
        """Record that ``phase``, begun at ``first``, is over after this process trained ``trained``
        epochs of it (early stopping included, so a resume skips it); the epoch it ended at."""
        if not self.folder:
            return first + trained
        if phase not in self.state.phases_done:  # (early stopping records its own end)
            end_phase(self.folder, self.state, phase, self.state.next_epoch(first))
        return self.state.phases_done[phase]

    def finished(self) -> None:
        """The run finished: nothing left to resume."""
        if self.folder:
            discard(self.run_id)


def resumable(run_id: str):
    """``(run, TrainConfig, State)`` of a run that ``--resume`` can continue, or a :class:`UserError`
    that says why not."""
    import mlflow

    from dfk.config import TrainConfig
    from dfk.runs.liveness import beats

    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"no run {run_id!r} in {mlflow.get_tracking_uri()}") from None
    status = run.info.status
    if status == "FINISHED":
        raise UserError(f"run {run_id} finished; there is nothing to resume")
    if status == "RUNNING":
        where = ", ".join(f"pid {b.pid} on {b.host}" for b in beats(run.data.tags)) or "another process"
        raise UserError(f"run {run_id} is still running ({where}); stop it first")
    folder = checkpoint_dir(run_id)
    if not (folder / STATE_FILE).exists():
        raise UserError(f"run {run_id} has no checkpoint in {folder} (checkpoints stay on the machine that "
                        "trained, until the run finishes); train it again instead")
    try:
        logged = mlflow.MlflowClient().download_artifacts(run_id, "config.json")
        cfg = TrainConfig.from_overrides(json.loads(Path(logged).read_text()))
    except (mlflow.exceptions.MlflowException, OSError, ValueError):
        raise UserError(f"run {run_id} is not a dfk training run (it has no config.json)") from None
    return run, cfg, State.load(folder)
