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
    frames: object = None  # videos: the frame-level evaluation (``clean`` is then the video-level one)

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
    from dfk.data.decode import BadImage, read_bytes, read_image, resize
    from dfk.data.views import decode_native
    from dfk.data.faces import crop, detect_faces, load_for_faces
    from dfk.metrics.binary import evaluate_predictions

    paths, labels = index.paths(split), index.labels(split)
    variants = [None, *perturbations]
    probs: dict = {v: [] for v in variants}
    kept_paths, kept_labels, skipped = [], [], []
    rng = np.random.default_rng(seed)
    bs = detector.batch_size
    native = getattr(detector, "native", False) and detector.faces is None  # scored at its own resolution
    for start in range(0, len(paths), bs):
        originals, ys, ps, faces = [], [], [], []
        for p, y in zip(paths[start:start + bs], labels[start:start + bs]):
            try:
                # full resolution: perturbations act there; a face model's photo as every entry point decodes it
                originals.append(decode_native(read_bytes(p)) if native else
                                 read_image(p) if detector.faces is None else load_for_faces(read_bytes(p)))
                if detector.faces is not None:  # found on the clean photo, cut from every variant alike
                    faces.append(detect_faces(originals[-1]))
                    if not faces[-1]:
                        originals.pop(), faces.pop()
                        skipped.append((p, "no face found"))
                        continue
                ys.append(y)
                ps.append(p)
            except BadImage as exc:
                skipped.append((p, str(exc)))
        for v in variants:
            images = [o if v is None else perturb(o, v[0], v[1], rng) for o in originals]
            if detector.faces is not None and images:  # a photo's score: its most fake face
                crops = [[resize(crop(x, b, detector.faces), detector.image_size) for b in bs_] for x, bs_ in zip(images, faces)]
                flat = detector.score(np.stack([c for cs in crops for c in cs]).astype(np.float32))
                ends = np.cumsum([len(cs) for cs in crops])
                probs[v].append(np.array([flat[e - len(cs):e].max() for e, cs in zip(ends, crops)]))
                continue
            if native and images:  # brought to the model as every entry point brings it (detector.views)
                probs[v].append(detector.score_views([detector.views(x) for x in images]))
                continue
            batch = [resize(x, detector.image_size) for x in images]
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


def model_data(model):
    """The images ``model``'s run trained on and how it split them (a DataSpec), or None; ``model`` a
    URI or a :class:`dfk.serving.uri.ModelRef`."""
    from dfk.runs import tracking
    from dfk.serving.uri import resolve_model

    run = resolve_model(model).run()
    return tracking.run_data(run) if run is not None else None


def scoring_data(model, data_dir: str | None = None, split: str = "test",
                 progress: Callable[[int], None] | None = None):
    """The data to score ``model`` (a URI or a :class:`dfk.serving.uri.ModelRef`) on, opened, and one
    line saying which folder and split it is.

    No ``data_dir``: the images the model's run trained on. The folder the run trained on: split as
    that run split it (fresh defaults would let its training images into the test split). Any other
    folder ("builtin" included): split with the defaults. A folder that changed since the run (its
    fingerprint differs) is scored all the same, and the line says so.
    """
    from dfk.data.scan import DataSpec

    trained = model_data(model)
    if not data_dir:
        if trained is None:
            raise UserError(f"cannot tell which data {model} was trained on (its run is not in this tracking "
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
    """``(path, probability of fake, verdict)`` for each readable file, scored in batches; a face
    model's faces are found and cut in each photo first (:mod:`dfk.evaluation.media`)."""
    from dfk.evaluation.media import predict_images, predict_media

    if getattr(detector, "faces", None) is not None:
        return [(r["path"], r["probability_fake"], r["label"])
                for r in predict_media(detector, files, batch_size, on_skip=on_skip, progress=progress)]
    return predict_images(detector, files, batch_size, on_skip, progress)


def evaluate_model(model_uri: str, data_dir: str | None = None, perturbations=(),
                   experiment: str = SETTINGS.eval_experiment, split: str = "test", frames: str | None = None,
                   aggregate: str = "mean"):
    """Log an evaluation run: the same metrics, plots and report as training's test stage, plus
    robustness. Returns ``(run id, FolderScore, the line saying which data was scored)``. A folder of
    videos (Fake|Real) is scored video by video (:func:`evaluate_videos`)."""
    import tempfile

    import mlflow

    from dfk.evaluation.media import video_folder
    from dfk.data.video import Sampling

    videos = video_folder(data_dir, split) if data_dir else None
    if videos is not None:
        if perturbations:
            raise UserError("perturbations apply to image folders; a folder of videos is scored clean")
        return evaluate_videos(model_uri, data_dir, videos, experiment, split, Sampling.parse(frames), aggregate)

    from dfk.runs import tracking
    from dfk.metrics.binary import write_report
    from dfk.serving.detector import load_detector
    from dfk.serving.uri import resolve_model

    model = resolve_model(model_uri)  # once: an alias that moves meanwhile cannot split data and model
    index, data = scoring_data(model, data_dir, split)
    detector = load_detector(model)
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


def evaluate_videos(model_uri: str, data_dir: str, videos: list[tuple[Path, int]], experiment: str,
                    split: str = "test", sampling=None, how: str = "mean"):
    """Log an evaluation run on labelled videos: video-level metrics as ``test_*`` (each video scored by the
    ``how`` of its frames), frame-level ones as ``test_frame_*``, the report of each, every timeline.
    Returns ``(run id, FolderScore with .frames, the line saying what was scored)``."""
    import math
    import tempfile

    import mlflow

    from dfk.evaluation.media import log_video_dataset, score_video_folder, write_timeline
    from dfk.metrics.binary import write_report
    from dfk.runs import tracking
    from dfk.serving.detector import load_detector

    from dfk.data.video import Sampling

    sampling = sampling or Sampling()
    root = Path(data_dir).resolve()
    detector = load_detector(model_uri)
    tracking.use_experiment(experiment)
    line = (f"{len(videos)} videos in {root} ({sum(y for _, y in videos)} fake), {sampling} frames each, "
            f"video score = {how} of frame scores" + (", faces cut by the model's rule" if detector.faces else ""))
    tags = {"model_uri": model_uri, "evaluation": "true", "scored_on": line[:5000], **tracking.standard_tags()}
    with tracking.run(f"evaluate-{root.name}", tags=tags) as active, tempfile.TemporaryDirectory() as tmp:
        tracking.log_params_once({"model_uri": model_uri, "data_dir": str(root), "split": split, "frames": str(sampling),
                                  "aggregate": how, "perturbations": "none"})
        log_video_dataset(root, videos)
        s = score_video_folder(detector, videos, sampling, how)
        metrics = {f"test_{k}": v for k, v in s.videos.metrics.items()}
        metrics.update({f"test_frame_{k}": v for k, v in s.frames.metrics.items()})
        metrics.update({"videos_scored": len(s.verdicts), "frames_scored": len(s.frames.y_true)})
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        write_report(s.videos, Path(tmp) / "evaluation", "test")
        write_report(s.frames, Path(tmp) / "evaluation" / "frames", "test_frame")
        for i, v in enumerate(s.verdicts):  # numbered: videos in Fake/ and Real/ may share a name
            write_timeline(v, Path(tmp) / "timelines", f"{i:03d}_{Path(v.path).stem}")
        mlflow.log_artifacts(tmp)
        mlflow.log_text("".join(f"{p}\t{r}\n" for p, r in s.skipped), "data/skipped_files.tsv")
        score = FolderScore(s.videos, {}, s.skipped)
        score.frames = s.frames
        return active.info.run_id, score, line
