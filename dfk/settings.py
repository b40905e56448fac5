"""The settings of the commands around a training run, each named once.

:class:`dfk.config.TrainConfig` holds what one run trains with; this holds what the commands that
start, pick, promote and serve runs default to: experiment names, the registered model and its
aliases, the promotion gate, the whole job's architectures, the sweep's defaults. The CLI options,
the library functions and the MLproject entry points (rendered by :mod:`dfk.cli.mlproject`) all read
:data:`SETTINGS`; the comment above a field is its help in the MLproject.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    # Experiment of the runs dfk starts itself (dfk train, dfk main); under mlflow run the runs go
    # to the experiment mlflow run names, and the commands below find them there.
    experiment: str = "dfk"
    # Experiment of sweeps: one parent run per sweep, one child run per trial.
    tune_experiment: str = "dfk-tune"
    # Experiment of evaluation runs (dfk evaluate and the whole job's robustness check).
    eval_experiment: str = "dfk-eval"
    # Registered model that register adds versions to and everything downstream loads.
    model_name: str = "deepfake-detector"
    # Alias of the version that serves.
    champion: str = "champion"
    # Alias of the newest registered version, waiting for the promotion gate.
    challenger: str = "challenger"
    # Run metric that picks the run to register (ties: lower test_log_loss).
    select_metric: str = "test_roc_auc"
    # Test ROC-AUC the challenger must gain over the champion on the same test split to replace it.
    promotion_margin: float = 0.005
    # What the whole job trains: comma-separated architectures, arch:key=value overriding a
    # parameter for one. srm learns forgery traces from scratch; resnet is the notebook's transfer
    # model (ImageNet weights where reachable). On a folder of the user's each trains with its own
    # defaults (the notebook's 256 px, full epochs).
    archs: str = "srm,resnet"
    # The demo's shortening, on the built-in set only, beneath an archs entry's own overrides: a
    # frozen ImageNet backbone learns little from 64 px synthetic traces, so resnet gets one small
    # epoch there and the demo ends in minutes on a CPU.
    demo_overrides: str = "resnet:epochs=1:image_size=32"
    # Robustness check of the champion: default, all, none or a list such as jpeg:50,blur.
    perturb: str = "default"
    # Trials a sweep adds to its study.
    n_trials: int = 20
    # Per-epoch validation metric a sweep optimises (val_auc, val_accuracy, val_loss, ...).
    objective: str = "val_auc"
    # Sweep pruner: median, hyperband or none.
    pruner: str = "median"
    # Processes a sweep starts on this machine, all working on the same study.
    workers: int = 1
    # Seconds between heartbeats: of a running trial in the Optuna storage (a trial silent for twice
    # this long, its worker killed or its machine gone, is failed and queued again by a live worker)
    # and of every open MLflow run (a tag with host and pid, see stale_run_after).
    heartbeat_interval: int = 10
    # Seconds a RUNNING run's heartbeat from another machine may be silent before the next dfk
    # command ends the run KILLED (on this machine a vanished process is recognised at once).
    stale_run_after: int = 300
    # Times one trial is queued again after its worker died.
    max_retry: int = 3
    # Most images one request to the served model (mlflow models serve, POST /invocations) may carry;
    # more is refused with HTTP 400 before any is decoded, so a request's memory and time stay bounded.
    max_request_rows: int = 256
    # Port of the web app on 127.0.0.1.
    app_port: int = 8000
    # Folder for Grad-CAM overlays and their gallery (under mlflow run: the entry point's run).
    gradcam_out: str = "gradcam"

    @property
    def champion_uri(self) -> str:
        """The URI serving, the app and the robustness check load."""
        return f"models:/{self.model_name}@{self.champion}"


SETTINGS = Settings()
