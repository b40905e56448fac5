"""Pruning pays: the same sweep without a pruner, with the median pruner and with hyperband (same seed, same trial count).

Reports epochs trained over all trials and the best objective of each sweep, then replays each
pruner on the curves of the no-pruner sweep (same trials, same order: the pruner's effect alone).
Goal: at least 40% fewer epochs, best value within 1 point (0.01 AUC).

    .venv/bin/python -m bench.tuning                     # writes the tuning section of docs/BENCHMARKS.md
    .venv/bin/python -m bench.tuning --keep runs/tuning  # keeps the studies; a rerun resumes or reads them back
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--pruners", default="none,median,hyperband", help="'none' is the reference")
    parser.add_argument("--train", type=int, default=500, help="training images per class")
    parser.add_argument("--validation", type=int, default=200, help="validation images per class")
    parser.add_argument("--keep", type=Path, help="keep the studies and runs in this folder (default: a temporary one)")
    args = parser.parse_args()

    import mlflow

    from bench.report import write_section
    from dfk.config import TrainConfig
    from dfk.data.synth import SynthSpec, builtin_dataset
    from dfk.tuning.space import PRUNERS
    from dfk.tuning.study import SweepSpec, make_pruner
    from dfk.tuning.sweep import tune

    pruners = args.pruners.split(",")
    rows, trials = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        data = builtin_dataset(SynthSpec(train=args.train, validation=args.validation, test=30, image_size=args.size))
        base = TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(data), image_size=args.size, epochs=args.epochs,
                                               patience=args.epochs, weights="none", gradcam_images=0))
        storage = f"sqlite:///{tmp}/optuna.db"
        for pruner in pruners:
            done = _finished(storage, pruner)
            if len(done) < args.trials:  # a study already in --keep is resumed, or read back when complete
                tune(SweepSpec(base=base, n_trials=args.trials - len(done), pruner=pruner, study_name=pruner,
                               storage=storage, experiment=f"bench-{pruner}"))
            trials[pruner] = _finished(storage, pruner)[: args.trials]
            rows[pruner] = _summary(trials[pruner])
            print(pruner, rows[pruner], flush=True)
    if "none" not in rows or len(rows) < 2:
        print("not written to docs/BENCHMARKS.md: that needs the reference 'none' and at least one pruner")
        return
    e0, b0 = rows["none"][:2]
    lines = [
        "## Tuning with and without pruning (`python -m bench.tuning`)",
        "",
        f"`cnn` at {args.size} px on a built-in set ({args.train}/{args.validation}/30 per class), {args.trials} TPE trials "
        f"(seed 42), up to {args.epochs} epochs each, objective `val_auc` (best epoch of each trial), the default search "
        "space. Goal: at least 40% fewer epochs than without pruning, best value within 0.01.",
        "",
        "| pruner | epochs trained | epochs saved | best val_auc | difference | trial states | wall time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for pruner, (e, b, states, secs) in rows.items():
        lines.append(f"| {_label(pruner, args.epochs)} | {e} | {1 - e / e0:.0%} | {b:.4f} | {b - b0:+.4f} | "
                     f"{states} | {secs:.0f} |")
    curves = [[t.intermediate_values[k] for k in sorted(t.intermediate_values)] for t in trials["none"]]
    lines += [
        "",
        "Each selectable pruner replayed on the curves of the no-pruner sweep: the same trials in the same order, so the "
        "difference is the pruner's alone, not the sampler's (in a real pruned sweep TPE learns from the pruned "
        "trials and proposes other ones).",
        "",
        "| pruner, replayed | epochs | epochs saved | best val_auc | difference | pruned trials |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for pruner in PRUNERS:
        if pruner != "none":
            e, b, n = replay(curves, make_pruner(pruner, args.epochs))
            lines.append(f"| {_label(pruner, args.epochs)} | {e} | {1 - e / e0:.0%} | {b:.4f} | {b - b0:+.4f} | {n} |")
    write_section("tuning", "\n".join(lines))


def replay(curves: list[list[float]], pruner) -> tuple[int, float, int]:
    """Run ``pruner`` over recorded per-epoch curves (maximised) through Optuna's ask/tell, fed the
    best value so far as the sweep's callback feeds it; returns epochs run, best complete value, pruned trials."""
    import numpy as np
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A fixed name: Hyperband assigns trials to brackets by hashing the study name with the trial number.
    study = optuna.create_study(study_name="replay", direction="maximize", pruner=pruner)
    epochs = 0
    for curve in curves:
        trial = study.ask()
        for step, value in enumerate(np.maximum.accumulate(curve)):
            trial.report(float(value), step)
            epochs += 1
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, max(curve))
    return epochs, study.best_value, sum(t.state.name == "PRUNED" for t in study.trials)


def _finished(storage: str, name: str) -> list:
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # no such study yet
        return []
    return [t for t in study.trials if t.state.is_finished()]


def _summary(trials: list) -> tuple[int, float, dict[str, int], float]:
    """Epochs trained over all trials, best complete value, trial states, and wall time first start to last end."""
    epochs = sum(len(t.intermediate_values) for t in trials)
    values = [t.value for t in trials if t.state.name == "COMPLETE"]
    states = dict(Counter(t.state.name for t in trials))
    secs = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return epochs, max(values), states, secs


def _label(pruner: str, epochs: int) -> str:
    """How the tables name a pruner: its name and the arguments dfk.tuning.sweep gives it."""
    from dfk.tuning.study import SweepSpec, describe_pruner

    if pruner == "none":
        return pruner
    default = "default, " if pruner == SweepSpec.__dataclass_fields__["pruner"].default else ""
    return f"{pruner} ({default}{describe_pruner(pruner, epochs)})"


if __name__ == "__main__":
    main()
