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
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

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
