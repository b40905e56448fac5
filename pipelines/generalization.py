"""Does a detector generalize? In-domain, cross-manipulation, cross-domain and few-shot ROC-AUC, for
each architecture and each starting point (from scratch, and from dfk's shipped pre-trained weights).

* in-domain: trained on ``base.data_dir`` (the built-in set by default), scored on its test split;
* cross-manipulation (DeepfakeBench's leave-one-out): for each manipulation kind, trained on a
  synthetic set whose fakes use only the other kinds, scored on reals and fakes of that kind alone;
* cross-domain: the in-domain model scored on a set made from ``photos`` (by default a photo set the
  pre-training corpus never used) with forgery parameters the built-in set never uses (``shifted``);
* few-shot: trained on ``few_shot`` images per class of a set made from ``photos`` with manipulation
  kinds that neither the built-in set nor the pre-training corpus use, scored on that set's test split.

The pre-training corpus (:mod:`pipelines.pretrain`) uses none of the kinds or photographs these
protocols score, so "from dfk weights" rows measure transfer, not memory.

Steps: synthesise the held-out sets -> per architecture and start: train in-domain -> evaluate
cross-domain -> per kind: train without it -> evaluate on it -> train few-shot -> evaluate. Each is a
child run, reused when it finished before with the same inputs (:mod:`dfk.runs.steps`), so a long
protocol stopped half way resumes where it stopped. ``bench/generalization.py`` runs this pipeline
for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import re
from pathlib import Path

from dfk.config import TrainConfig

#: Experiment of the protocol's runs, apart from the main job's.
EXPERIMENT = "dfk-generalization"
#: Starting points compared: from scratch, and from dfk's shipped pre-trained weights.
STARTS = ("none", "dfk")
#: Training images per class of the few-shot set: "a few hundred real examples" a user may have labelled.
FEW_SHOT = 200
#: Goals for the best architecture (DeepfakeBench's cross-dataset mean is 0.77).
GOALS = {"cross_manipulation": 0.85, "cross_domain": 0.80, "few_shot": 0.80}


def few_shot_kinds() -> tuple[str, ...]:
    """Manipulation kinds that neither the built-in set nor the pre-training corpus use."""
    from dfk.data.synth import HELD_OUT_MANIPULATIONS, MANIPULATIONS

    return tuple(m for m in HELD_OUT_MANIPULATIONS if m not in MANIPULATIONS)


def run_generalization(base: TrainConfig, archs: str = "srm", out: str | Path | None = None, photos: str | None = None,
                       test: int = 150, leave_out_train: int = 500, kinds: tuple[str, ...] | None = None,
                       starts: tuple[str, ...] = STARTS, few_shot: int = FEW_SHOT, experiment: str = EXPERIMENT,
                       force: bool = False) -> list[dict]:
    """One row per architecture and start (``weights``): ``in_domain``, ``cross_domain``, one ROC-AUC
    per left-out kind and their mean ``cross_manipulation``, and ``few_shot`` (absent when
    ``few_shot`` is 0). Synthetic sets are written under ``out`` (default: beside the tracking store)."""
    import mlflow

    from dfk.config import parse_archs
    from dfk.data.scan import DataSpec, open_data
    from dfk.data.synth import HELD_OUT_PHOTOS, MANIPULATIONS, SynthSpec
    from dfk.errors import UserError
    from dfk.runs.steps import pipeline
    from dfk.runs.tracking import beside_store
    from pipelines import steps

    photos = photos or HELD_OUT_PHOTOS
    kinds = tuple(kinds or MANIPULATIONS)
    if unknown := [k for k in kinds if k not in MANIPULATIONS]:
        raise UserError(f"unknown manipulation {', '.join(unknown)}; choose from {', '.join(MANIPULATIONS)}")
    if not Path(photos).is_dir() and photos != "builtin":
        raise UserError(f"photos folder {photos} does not exist: apt-get install mate-backgrounds, or pass --photos DIR")
    SynthSpec(photos=photos).validate()  # a bad photos folder fails before any run
    cfgs = [c.replace(weights=start) for c in parse_archs(archs, base) for start in starts]  # bad weights fail here too
    in_domain = steps.open_data(cfgs)
    out = Path(out or beside_store() / "generalization")
    held_out = dict(train=2, validation=2, test=test)
    without = dict(train=leave_out_train, validation=max(2, leave_out_train // 4), test=max(2, leave_out_train // 4))
    client = mlflow.MlflowClient()

    def auc(p, model_run: str, folder: str) -> float:
        fingerprint = open_data(folder).fingerprint
        scored = steps.evaluate(p, f"runs:/{model_run}/model", "none", fingerprint, folder)
        return float(scored.outputs["test_roc_auc"])

    def synth(p, name: str, **spec) -> str:
        return steps.synth(p, SynthSpec(**spec), out / name).outputs["path"]

    def trained_on(p, cfg: TrainConfig, folder: str) -> str:
        c = cfg.replace(data_dir=folder, image_size=cfg.image_size)  # held-out sets at the in-domain size
        return steps.train(p, c, open_data(folder, c.val_split, c.seed)).run_id

    with pipeline("generalization", experiment, force) as p:
        cross_domain = synth(p, "cross-domain", photos=photos, shifted=True, seed=101, **held_out)
        leave_out = {}
        for k in kinds:
            others = tuple(m for m in MANIPULATIONS if m != k)
            leave_out[k] = (synth(p, f"without-{k}", manipulations=others, seed=102, **without),
                            synth(p, f"only-{k}", manipulations=(k,), seed=103, **held_out))
        if few_shot:
            small = synth(p, "few-shot", photos=photos, manipulations=few_shot_kinds(), shifted=True, seed=104,
                          train=few_shot, validation=max(2, few_shot // 4), test=test)
        rows = []
        for cfg in cfgs:
            run = steps.train(p, cfg, in_domain[DataSpec.of_config(cfg)]).run_id
            row = {"arch": cfg.arch, "weights": cfg.weights, "image_size": cfg.image_size,
                   "in_domain": client.get_run(run).data.metrics["test_roc_auc"], "cross_domain": auc(p, run, cross_domain)}
            for kind, (train_dir, test_dir) in leave_out.items():
                row[kind] = auc(p, trained_on(p, cfg, train_dir), test_dir)
            row["cross_manipulation"] = sum(row[k] for k in kinds) / len(kinds)
            if few_shot:
                row["few_shot"] = auc(p, trained_on(p, cfg, small), small)
            rows.append(row)
            start = re.sub(r"[^\w.-]", "_", cfg.weights)  # a weights file's path as a metric-name part
            for protocol in GOALS:
                if protocol in row:
                    client.log_metric(p.run_id, f"{cfg.arch}_{start}_{protocol}_roc_auc", row[protocol])
        client.log_dict(p.run_id, rows, "generalization.json")
        return rows
