"""Does a detector generalize? In-domain, cross-manipulation and cross-domain ROC-AUC per architecture.

* in-domain: trained on ``base.data_dir`` (the built-in set by default), scored on its test split;
* cross-manipulation (DeepfakeBench's leave-one-out): for each manipulation kind, trained on a
  synthetic set whose fakes use only the other kinds, scored on reals and fakes of that kind alone;
* cross-domain: the in-domain model scored on a set made from ``photos`` with forgery parameters the
  built-in set never uses (``shifted``).

Steps: synthesise the held-out sets -> per architecture: train in-domain -> evaluate cross-domain ->
per kind: train without it -> evaluate on it. Each is a child run, reused when it finished before
with the same inputs (:mod:`dfk.runs.steps`), so a long protocol stopped half way resumes where it
stopped. Every held-out set is scored at the size its model trained at. ``bench/generalization.py``
measures the same protocols for docs/BENCHMARKS.md.
"""

from __future__ import annotations

from pathlib import Path

from dfk.config import TrainConfig

#: Experiment of the protocol's runs, apart from the main job's.
EXPERIMENT = "dfk-generalization"


def run_generalization(base: TrainConfig, archs: str = "srm", out: str | Path | None = None, photos: str = "builtin",
                       test: int = 150, leave_out_train: int = 500, kinds: tuple[str, ...] | None = None,
                       experiment: str = EXPERIMENT, force: bool = False) -> list[dict]:
    """One row per architecture: ``in_domain``, ``cross_domain``, one ROC-AUC per left-out kind and
    their mean ``cross_manipulation``. Synthetic sets are written under ``out`` (default: beside the
    tracking store)."""
    import mlflow

    from dfk.config import parse_archs
    from dfk.data.scan import DataSpec, open_data
    from dfk.data.synth import MANIPULATIONS, SynthSpec
    from dfk.errors import UserError
    from dfk.runs.steps import pipeline
    from dfk.runs.tracking import beside_store
    from pipelines import steps

    kinds = tuple(kinds or MANIPULATIONS)
    if unknown := [k for k in kinds if k not in MANIPULATIONS]:
        raise UserError(f"unknown manipulation {', '.join(unknown)}; choose from {', '.join(MANIPULATIONS)}")
    SynthSpec(photos=photos).validate()  # a missing photos folder fails before any run
    cfgs = parse_archs(archs, base)
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

    with pipeline("generalization", experiment, force) as p:
        cross_domain = synth(p, "cross-domain", photos=photos, shifted=True, seed=101, **held_out)
        leave_out = {}
        for k in kinds:
            others = tuple(m for m in MANIPULATIONS if m != k)
            leave_out[k] = (synth(p, f"without-{k}", manipulations=others, seed=102, **without),
                            synth(p, f"only-{k}", manipulations=(k,), seed=103, **held_out))
        rows = []
        for cfg in cfgs:
            run = steps.train(p, cfg, in_domain[DataSpec.of_config(cfg)]).run_id
            row = {"arch": cfg.arch, "image_size": cfg.image_size,
                   "in_domain": client.get_run(run).data.metrics["test_roc_auc"], "cross_domain": auc(p, run, cross_domain)}
            for kind, (train_dir, test_dir) in leave_out.items():
                c = cfg.replace(data_dir=train_dir, image_size=cfg.image_size)  # held-out sets at the in-domain size
                row[kind] = auc(p, steps.train(p, c, open_data(train_dir, c.val_split, c.seed)).run_id, test_dir)
            row["cross_manipulation"] = sum(row[k] for k in kinds) / len(kinds)
            rows.append(row)
            client.log_metric(p.run_id, f"{cfg.arch}_cross_manipulation_roc_auc", row["cross_manipulation"])
            client.log_metric(p.run_id, f"{cfg.arch}_cross_domain_roc_auc", row["cross_domain"])
        client.log_dict(p.run_id, rows, "generalization.json")
        return rows
