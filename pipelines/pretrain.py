"""Pre-train dfk's forensic detectors on a broad synthetic corpus and write the weights dfk ships.

``python -m dfk.cli.pipelines pretrain`` (MLproject entry point ``pretrain``) calls :func:`run_pretrain`.
Steps, each a child run of the pipeline's run, reused when it finished before with the same inputs
(:mod:`dfk.runs.steps`):

1. ``synth``: a corpus of the pre-training manipulations (``PRETRAIN_MANIPULATIONS``) on the
   pre-training photographs (``PRETRAIN_PHOTOS``) with ``broad`` forgeries (:mod:`dfk.data.synth`);
   none of the kinds or photographs the generalization protocols score on (:mod:`pipelines.generalization`);
2. one training run per architecture, from scratch, on that corpus' labels and forged regions
   (:mod:`dfk.training.localized`: Face X-ray's dense supervision; ``region_weight`` 0 for labels alone);
3. ``export``: each run's best weights (``Model.save_weights`` of the whole model) into ``out``
   (default: the package's own ``dfk/models/pretrained``) and their entry in its ``manifest.json``:
   file, SHA-256, size, image size, the corpus spec, epochs, test ROC-AUC and the runs they came from.

``dfk train --arch srm -P weights=dfk`` (or the default ``auto``) then starts from them
(:func:`dfk.models.weights.shipped_weights`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from dfk.config import TrainConfig, parse_archs

#: Experiment of the pre-training's runs.
EXPERIMENT = "dfk-pretrain"
#: Artifact folder of a training step's weights (and of the export step's copy and manifest).
WEIGHTS = "weights"


@dataclass(frozen=True)
class PretrainSpec:
    """What to pre-train. Training parameters (epochs, batch size, ...) are the base TrainConfig's."""

    archs: str = "srm,npr"  # the forensic detectors, which learn from scratch and have no ImageNet weights
    train: int = 8000  # images per class in the corpus' Train: 16k images, 8x the built-in set
    validation: int = 500  # per class: early stopping and the checkpoint choose on this
    test: int = 500  # per class: the test ROC-AUC the manifest records
    image_size: int = 64  # the built-in set's size; the fully convolutional nets load at any size
    seed: int = 0  # the corpus generator's seed
    # Weight of the forged-region loss beside the label's (Face X-ray's dense supervision, see
    # dfk.training.localized): subtle self-blends are learnt far faster with it; 0: labels alone.
    region_weight: float = 1.0
    out: str = ""  # folder of the weights and manifest; "": the package's own dfk/models/pretrained
    corpus: str = ""  # folder the corpus is written under; "": beside the tracking store

    def synth_spec(self):
        from dfk.data.synth import PRETRAIN_MANIPULATIONS, PRETRAIN_PHOTOS, SynthSpec

        return SynthSpec(train=self.train, validation=self.validation, test=self.test, image_size=self.image_size,
                         seed=self.seed, manipulations=tuple(PRETRAIN_MANIPULATIONS), photos=PRETRAIN_PHOTOS,
                         broad=True)

    def out_dir(self) -> Path:
        from dfk.models.weights import PRETRAINED_DIR

        return Path(self.out).expanduser().resolve() if self.out else PRETRAINED_DIR

    def corpus_dir(self) -> Path:
        """A folder per corpus spec, so that another spec never meets a folder written for this one."""
        from dfk.runs.tracking import beside_store

        spec = json.dumps(asdict(self.synth_spec()), sort_keys=True)
        base = Path(self.corpus).expanduser() if self.corpus else beside_store()
        return base / f"pretrain-corpus-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"

    def configs(self, base: TrainConfig, data_dir: str) -> list[TrainConfig]:
        """One config per architecture: from scratch, at the corpus' size, on the corpus."""
        return parse_archs(self.archs, base.replace(data_dir=data_dir, image_size=self.image_size, weights="none"))


@dataclass
class PretrainResult:
    parent_run_id: str
    run_ids: dict[str, str]
    manifest: dict[str, dict]
    out: Path


def run_pretrain(base: TrainConfig, spec: PretrainSpec = PretrainSpec(), experiment: str = EXPERIMENT,
                 force: bool = False) -> PretrainResult:
    """Synthesise the corpus, train each architecture on it from scratch and export their weights."""
    import mlflow

    from dfk.runs import tracking
    from dfk.runs.steps import pipeline
    from pipelines import steps

    synth_spec = spec.synth_spec()
    synth_spec.validate()
    corpus = spec.corpus_dir()
    spec.configs(base, str(corpus))  # bad architectures or overrides fail before any run
    out = spec.out_dir()
    with pipeline("pretrain", experiment, force) as p:
        client = mlflow.MlflowClient()
        tracking.log_params_once({**asdict(spec), "out": str(out), "corpus": str(corpus)}, p.run_id)
        client.log_dict(p.run_id, {"spec": asdict(synth_spec)}, "corpus/spec.json")
        data = steps.synth(p, synth_spec, corpus).outputs["path"]
        cfgs = spec.configs(base, data)
        (index,) = steps.open_data(cfgs).values()
        client.set_tag(p.run_id, "corpus_fingerprint", index.fingerprint)
        runs = {cfg.arch: localize(p, cfg, index, spec.region_weight).run_id for cfg in cfgs}
        export(p, runs, cfgs, synth_spec, out, index.fingerprint)
        for arch, rid in runs.items():
            client.set_tag(p.run_id, f"run_{arch}", rid)
        manifest = json.loads((out / "manifest.json").read_text())
        written = ", ".join(f"{a} (sha256 {manifest[a]['sha256'][:12]})" for a in runs)
        p.say(f"wrote {written} into {out}")
        return PretrainResult(p.run_id, runs, {a: manifest[a] for a in runs}, out)


def localize(p, cfg: TrainConfig, index, region_weight: float):
    """Step 2, per architecture: train ``cfg.arch`` from scratch on the corpus' labels and forged
    regions (:func:`dfk.training.localized.pretrain_localized`); the step's run holds every epoch's
    figures, the test ROC-AUC and the weights (artifact ``WEIGHTS/<arch>.weights.h5``)."""

    def body(run_id: str) -> dict:
        import mlflow

        from dfk.training.localized import pretrain_localized, save_weights

        client = mlflow.MlflowClient()
        for tag, value in {"arch": cfg.arch, "backbone_weights": "random"}.items():
            client.set_tag(run_id, tag, value)
        r = pretrain_localized(cfg, index, region_weight, log=lambda k, v, step: client.log_metric(run_id, k, v, step=step))
        client.log_metric(run_id, "test_roc_auc", r.test_roc_auc)
        client.log_metric(run_id, "epochs_trained", len(r.history.get("loss", [])))
        with tempfile.TemporaryDirectory() as tmp:
            client.log_artifact(run_id, str(save_weights(r.model, Path(tmp), cfg.arch)), WEIGHTS)
        p.say(f"{cfg.arch}: test ROC-AUC {r.test_roc_auc:.3f} on the corpus' test split")
        return {"test_roc_auc": r.test_roc_auc}

    params = {**cfg.to_dict(), "data_dir": index.spec.data_dir, "region_weight": region_weight}
    return p.step(cfg.arch, params, body, data=index.fingerprint)


def _written(out: Path, digests: dict[str, str]) -> bool:
    """Whether ``out`` still holds the weights an earlier export wrote (and its manifest lists them)."""
    from dfk.models.weights import manifest, sha256_of

    try:
        listed = manifest(out)
        return all(listed.get(a, {}).get("sha256") == d and sha256_of(out / listed[a]["file"]) == d
                   for a, d in digests.items())
    except Exception:  # a missing or damaged folder: export again
        return False


def export(p, runs: dict[str, str], cfgs: list[TrainConfig], synth_spec, out: Path, data: str):
    """Step 3: each run's best weights into ``out`` and their entries in its manifest; outputs each
    architecture's SHA-256. Entries for other architectures already in the manifest are kept."""

    def body(run_id: str) -> dict:
        import mlflow

        from dfk.data.synth import GENERATOR_VERSION
        from dfk.models import get_spec
        from dfk.models.weights import MANIFEST, manifest, sha256_of
        from dfk.runs.steps import code_version
        from dfk.training.localized import weights_name

        client = mlflow.MlflowClient()
        out.mkdir(parents=True, exist_ok=True)
        entries = manifest(out)
        experiment = client.get_experiment(client.get_run(run_id).info.experiment_id).name
        with tempfile.TemporaryDirectory() as tmp:
            for cfg in cfgs:
                trained = client.get_run(runs[cfg.arch])
                name = weights_name(cfg.arch)
                got = mlflow.artifacts.download_artifacts(run_id=runs[cfg.arch], artifact_path=f"{WEIGHTS}/{name}", dst_path=tmp)
                shutil.move(got, out / name)  # the file first, then the manifest naming it
                metrics = trained.data.metrics
                entries[cfg.arch] = {
                    "file": name, "sha256": sha256_of(out / name), "bytes": (out / name).stat().st_size,
                    "image_size": cfg.image_size, "dense_units": cfg.dense_units or get_spec(cfg.arch).dense_units,
                    "corpus": json.loads(json.dumps(asdict(synth_spec))), "generator_version": GENERATOR_VERSION,
                    "epochs": cfg.epochs, "epochs_trained": int(metrics.get("epochs_trained", 0)),
                    "test_roc_auc": metrics.get("test_roc_auc"), "run_id": runs[cfg.arch], "experiment": experiment,
                    "pipeline_run_id": p.run_id, "dfk_code": code_version(),
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
                client.log_artifact(run_id, str(out / name), WEIGHTS)
            staged = Path(tmp) / MANIFEST
            staged.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
            shutil.move(str(staged), out / MANIFEST)
        client.log_artifact(run_id, str(out / MANIFEST), WEIGHTS)
        return {f"sha256_{a}": entries[a]["sha256"] for a in runs}

    params = {"runs": ",".join(f"{a}={r}" for a, r in sorted(runs.items())), "out": str(out)}
    return p.step("export", params, body, data=data,
                  usable=lambda s: _written(out, {a: s.outputs.get(f"sha256_{a}", "") for a in runs}))


def replace_spec(spec: PretrainSpec, **given) -> PretrainSpec:
    """``spec`` with the options given (None: not given)."""
    return dataclasses.replace(spec, **{k: v for k, v in given.items() if v is not None})
