"""Score a logged or registered model on a folder: clean, and under the perturbations detectors fail on.

Used by ``dfk evaluate`` (which logs an evaluation run), by promotion (both aliases on the same
split) and by the main pipeline. Metrics come from :mod:`dfk.metrics.binary`, the one metrics module.

Perturbations are applied to both classes alike, at the image's own resolution, before the
model's resize: JPEG re-compression (the classic failure: detectors trained without it collapse
towards chance), down-then-up resizing, Gaussian blur, Gaussian noise and brightness shifts.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from dfk.errors import UserError
from dfk.settings import SETTINGS

#: kind -> levels. JPEG quality; resize factor; blur sigma (px); noise sigma (0..255); brightness shift.
PERTURBATIONS: dict[str, tuple] = {
    "jpeg": (90, 70, 50, 30),
    "resize": (0.5, 0.25),
    "blur": (1, 2, 3),
    "noise": (5, 10, 20),
    "brightness": (-40, 40),
}
#: The subset the main pipeline runs: one strong level of each kind.
DEFAULT_SUBSET = ("jpeg:50", "resize:0.5", "blur:2", "noise:10", "brightness:40")
ROBUST_METRICS = ("roc_auc", "eer", "accuracy")


def perturb(image: np.ndarray, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """Apply one perturbation to a uint8 RGB image at its own size."""
    import cv2
    from PIL import Image

    x = image
    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, "JPEG", quality=int(level))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    if kind == "resize":
        h, w = x.shape[:2]
        small = cv2.resize(x, (max(1, int(w * level)), max(1, int(h * level))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == "blur":
        return cv2.GaussianBlur(x, (0, 0), float(level))
    if kind == "noise":
        return np.clip(x + rng.normal(0, level, x.shape), 0, 255).astype(np.uint8)
    if kind == "brightness":
        return np.clip(x.astype(np.int16) + int(level), 0, 255).astype(np.uint8)
    raise UserError(f"unknown perturbation {kind!r}; choose from {', '.join(PERTURBATIONS)}")


def parse_perturbations(spec: str | None) -> list[tuple[str, float]]:
    """``all``, ``default``, ``none``/empty, or a comma list of ``kind`` or ``kind:level``."""
    if not spec or spec == "none":
        return []
    if spec == "all":
        return [(k, lv) for k, levels in PERTURBATIONS.items() for lv in levels]
    items = DEFAULT_SUBSET if spec == "default" else [s.strip() for s in spec.split(",") if s.strip()]
    out = []
    for item in items:
        kind, _, level = item.partition(":")
        if kind not in PERTURBATIONS:
            raise UserError(f"unknown perturbation {kind!r}; choose from {', '.join(PERTURBATIONS)} (or all, default)")
        if not level:
            out += [(kind, lv) for lv in PERTURBATIONS[kind]]
            continue
        try:
            value = float(level)
        except ValueError:
            raise UserError(f"perturbation level {level!r} of {kind} is not a number") from None
        out.append((kind, int(value) if value.is_integer() else value))
    return out


def metric_key(kind: str, level, metric: str) -> str:
    return f"robust_{kind}_{level}_{metric}"


@dataclass
class FolderScore:
    clean: object  # dfk.metrics.binary.Evaluation
    robust: dict[tuple[str, float], dict[str, float]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def robust_metrics(self) -> dict[str, float]:
        out = {}
        for (kind, level), m in self.robust.items():
            for name in ROBUST_METRICS:
                out[metric_key(kind, level, name)] = m[name]
                out[metric_key(kind, level, name) + "_drop"] = self.clean.metrics[name] - m[name]
        return out


def score_folder(detector, index, split: str = "test", perturbations=(), seed: int = 0,
                 progress: Callable[[int], None] | None = None) -> FolderScore:
    """Predictions of ``detector`` on ``split`` of ``index``, clean and perturbed, with metrics."""
    from dfk.data.decode import BadImage, read_image, resize
    from dfk.metrics.binary import evaluate_predictions

    paths, labels = index.paths(split), index.labels(split)
    variants = [None, *perturbations]
    probs: dict = {v: [] for v in variants}
    kept_paths, kept_labels, skipped = [], [], []
    rng = np.random.default_rng(seed)
    bs = detector.batch_size
    for start in range(0, len(paths), bs):
        originals, ys, ps = [], [], []
        for p, y in zip(paths[start:start + bs], labels[start:start + bs]):
            try:
                originals.append(read_image(p))  # full resolution: perturbations act there
                ys.append(y)
                ps.append(p)
            except BadImage as exc:
                skipped.append((p, str(exc)))
        for v in variants:
            batch = [resize(o if v is None else perturb(o, v[0], v[1], rng), detector.image_size) for o in originals]
            if batch:
                probs[v].append(detector.score(np.stack(batch).astype(np.float32)))
        kept_paths += ps
        kept_labels += ys
        if progress:
            progress(len(paths[start:start + bs]))
    if not kept_paths:
        raise UserError(f"no readable images in the {split} split of {index.root}")
    clean = evaluate_predictions(kept_labels, np.concatenate(probs[None]), detector.threshold, kept_paths)
    robust = {v: evaluate_predictions(kept_labels, np.concatenate(probs[v]), detector.threshold).metrics
              for v in perturbations}
    return FolderScore(clean, robust, skipped)


def write_robustness(score: FolderScore, out: Path) -> list[Path]:
    """The robustness table (CSV and JSON) and one heatmap of ROC-AUC drop per perturbation and level."""
    import pandas as pd

    from dfk.metrics.plots import pyplot, save

    rows = [{"perturbation": k, "level": lv, **{m: v[m] for m in ROBUST_METRICS},
             **{f"{m}_drop": score.clean.metrics[m] - v[m] for m in ROBUST_METRICS}}
            for (k, lv), v in score.robust.items()]
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "robustness.csv", index=False)
    (out / "robustness.json").write_text(json.dumps({"clean": {m: score.clean.metrics[m] for m in ROBUST_METRICS},
                                                     "perturbed": rows}, indent=2))
    written = [out / "robustness.csv", out / "robustness.json"]
    if rows:
        plt = pyplot()
        labels = [f"{r['perturbation']} {r['level']}" for r in rows]
        values = np.array([[r["roc_auc"] if math.isfinite(r["roc_auc"]) else np.nan for r in rows]])
        fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows)), 2.4))
        im = ax.imshow(values, cmap="RdYlGn", vmin=0.5, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks([0], ["ROC-AUC"])
        for i, v in enumerate(values[0]):
            ax.text(i, 0, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
        ax.set_title(f"robustness (clean ROC-AUC {score.clean.metrics['roc_auc']:.3f})")
        fig.colorbar(im, ax=ax)
        written.append(save(fig, out / "robustness_heatmap.png"))
    return written


def model_data(model_uri: str):
    """The images ``model_uri``'s run trained on and how it split them (a DataSpec), or None."""
    from dfk.runs import tracking

    run = tracking.model_run(model_uri)
    return tracking.run_data(run) if run is not None else None


def scoring_data(model_uri: str, data_dir: str | None = None, split: str = "test",
                 progress: Callable[[int], None] | None = None):
    """The data to score ``model_uri`` on, opened, and one line saying which folder and split it is.

    No ``data_dir``: the images the model's run trained on. The folder the run trained on: split as
    that run split it (fresh defaults would let its training images into the test split). Any other
    folder ("builtin" included): split with the defaults. A folder that changed since the run (its
    fingerprint differs) is scored all the same, and the line says so.
    """
    from dfk.data.scan import DataSpec

    trained = model_data(model_uri)
    if not data_dir:
        if trained is None:
            raise UserError(f"cannot tell which data {model_uri} was trained on (its run is not in this tracking "
                            "store); name the folder to score on")
        spec = trained
    else:
        given = DataSpec.of(data_dir)
        spec = trained if trained is not None and trained.same_images(given) else given
    index = spec.open(progress)
    line = spec.describe(split)
    if spec is trained:
        line += ", as the model's run split it"
        if trained.fingerprint and index.fingerprint != trained.fingerprint:
            line += (f"; the folder changed since that run (fingerprint {index.fingerprint}, trained on "
                     f"{trained.fingerprint}), so its test split may hold images the model trained on")
    return index, line


def predict_files(detector, files, batch_size: int, on_skip=None, progress: Callable[[int], None] | None = None):
    """``(path, probability of fake, verdict)`` for each readable file, scored in batches."""
    from dfk.data.decode import ImageBatches
    from dfk.metrics.binary import verdict

    rows = []
    batches = ImageBatches(files, detector.image_size, batch_size, on_skip)
    for names, x, n in batches:
        if names:
            probs = detector.score(x)
            rows += [(str(f), float(p), str(v)) for f, p, v in zip(names, probs, verdict(probs, detector.threshold))]
        if progress:
            progress(n)
    return rows


def evaluate_model(model_uri: str, data_dir: str | None = None, perturbations=(),
                   experiment: str = SETTINGS.eval_experiment, split: str = "test"):
    """Log an evaluation run: the same metrics, plots and report as training's test stage, plus
    robustness. Returns ``(run id, FolderScore, the line saying which data was scored)``."""
    import tempfile

    import mlflow

    from dfk.runs import tracking
    from dfk.metrics.binary import write_report
    from dfk.serving.detector import load_detector

    index, data = scoring_data(model_uri, data_dir, split)
    detector = load_detector(model_uri)
    tracking.use_experiment(experiment)
    tags = {"model_uri": model_uri, "evaluation": "true", "scored_on": data[:5000], **tracking.standard_tags()}
    with tracking.run(f"evaluate-{Path(index.root).name}", tags=tags) as active, tempfile.TemporaryDirectory() as tmp:
        tracking.log_params_once({"model_uri": model_uri, "data_dir": index.spec.data_dir, "split": split,
                                  "val_split": index.spec.val_split, "seed": index.spec.seed,
                                  "perturbations": ",".join(f"{k}:{lv}" for k, lv in perturbations) or "none"})
        tracking.log_dataset(index, context="evaluation")
        score = score_folder(detector, index, split, perturbations, index.spec.seed)
        metrics = {f"test_{k}": v for k, v in score.clean.metrics.items()}
        metrics.update(score.robust_metrics())
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        write_report(score.clean, Path(tmp) / "evaluation", "test")
        if perturbations:
            write_robustness(score, Path(tmp) / "robustness")
        mlflow.log_artifacts(tmp)
        mlflow.log_text("".join(f"{p}\t{r}\n" for p, r in score.skipped), "data/skipped_files.tsv")
        return active.info.run_id, score, data
