"""Photos with faces and videos scored by a dfk model: faces per picture, sampled frames, a video verdict, its timeline.

A frame's score is the model's probability for the whole frame (a model trained on whole images) or
for the most fake face in it (a face model; frames with no face are shown but not scored). The video's
score aggregates its frames' scores: the **mean** by default, as DeepfakeBench scores a video (the
average of its frame scores; video-level AUC in its ``training/metrics``), or the max or median;
the model's threshold then gives the label. Scoring goes in batches of the model's batch size
across frames, so a frame with one face costs one crop, not a batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from dfk.data.video import Sampling, VideoLimits

#: How frame scores make a video's score; the first is the default.
AGGREGATES = ("mean", "max", "median")


@dataclass
class FrameScore:
    index: int
    time_s: float
    probability_fake: float | None  # None: a face model found no face in this frame
    label: str
    faces: list[dict] = field(default_factory=list)  # face model: box, probability and label of each face

    def to_dict(self) -> dict:
        return {"index": self.index, "time_s": round(self.time_s, 3), "probability_fake": self.probability_fake,
                "label": self.label, **({"faces": self.faces} if self.faces else {})}


@dataclass
class VideoVerdict:
    path: str
    probability_fake: float | None  # None: no frame could be scored (a face model found no face)
    label: str
    aggregate: str
    threshold: float
    frames: list[FrameScore]
    info: dict  # frames, fps, width, height of the video, and notes on bounds reached
    sampling: str

    @property
    def scored(self) -> list[FrameScore]:
        return [f for f in self.frames if f.probability_fake is not None]

    def most_suspicious(self, k: int = 3) -> list[FrameScore]:
        return sorted(self.scored, key=lambda f: -f.probability_fake)[:k]

    def to_dict(self) -> dict:
        return {"path": self.path, "probability_fake": self.probability_fake, "label": self.label,
                "aggregate": self.aggregate, "threshold": self.threshold, "sampling": self.sampling,
                "frames_sampled": len(self.frames), "frames_scored": len(self.scored), "video": self.info,
                "timeline": [f.to_dict() for f in self.frames]}


def aggregate(probs, how: str = AGGREGATES[0]) -> float:
    from dfk.errors import UserError

    if how not in AGGREGATES:
        raise UserError(f"unknown aggregate {how!r}; choose from {', '.join(AGGREGATES)}")
    p = np.asarray(probs, float)
    return float({"mean": np.mean, "max": np.max, "median": np.median}[how](p))


def frame_inputs(detector, image: np.ndarray):
    """What the model scores in a frame: ``(boxes or None, inputs (N, size, size, 3))``; a face model's
    faces cut by its rule from the frame shrunk as a photo is (:func:`dfk.data.faces.load_for_faces`); a
    native-resolution model's views of the frame (:meth:`dfk.serving.detector.DeepfakeDetector.views`)."""
    from dfk.data.views import scoring_views
    from dfk.data.faces import face_crops, shrink

    if detector.faces is None:
        return None, scoring_views(image, detector.image_size, getattr(detector, "native", False))
    return face_crops(shrink(image), detector.faces, detector.image_size)


def score_video(detector, source, sampling: Sampling = Sampling(), limits: VideoLimits = VideoLimits(),
                how: str = AGGREGATES[0], path: str = "", on_frame: Callable[[int], None] | None = None) -> VideoVerdict:
    """Sample ``source`` (a file or bytes), score its frames in batches, aggregate. Raises
    :class:`dfk.data.video.BadVideo` for a video that cannot be read or is past ``limits``."""
    from dfk.data.video import sample_frames
    from dfk.metrics.binary import verdict

    aggregate([0.0], how)  # an unknown aggregate fails before any decoding
    info, frames = sample_frames(source, sampling, limits)
    scores: list[FrameScore] = []
    pending: list[tuple[FrameScore, list, np.ndarray]] = []  # frames whose inputs wait for a batch

    def flush():
        if not pending:
            return
        if getattr(detector, "native", False) and detector.faces is None:  # one probability per frame's views
            probs = detector.score_views([inputs for _, _, inputs in pending])
            sizes = [1] * len(pending)
        else:
            x = np.concatenate([inputs for _, _, inputs in pending])
            probs = detector.score(x.astype(np.float32)) if len(x) else np.zeros(0)
            sizes = [len(inputs) for _, _, inputs in pending]
        at = 0
        for (fs, boxes, inputs), n in zip(pending, sizes):
            p = probs[at:at + n]
            at += n
            if boxes is None:
                fs.probability_fake = float(p[0])
                fs.label = verdict(fs.probability_fake, detector.threshold)
            else:
                v = detector.face_verdict(boxes, p)
                fs.probability_fake, fs.label, fs.faces = v["probability_fake"], v["label"], v["faces"]
        pending.clear()

    for frame in frames:
        boxes, inputs = frame_inputs(detector, frame.image)
        fs = FrameScore(frame.index, frame.time_s, None, "no_face")
        scores.append(fs)
        pending.append((fs, boxes, inputs))
        if sum(len(i) for _, _, i in pending) >= detector.batch_size:
            flush()
        if on_frame:
            on_frame(1)
    flush()
    scored = [f.probability_fake for f in scores if f.probability_fake is not None]
    prob = aggregate(scored, how) if scored else None
    label = verdict(prob, detector.threshold) if prob is not None else "no_face"
    return VideoVerdict(str(path), prob, label, how, float(detector.threshold), scores,
                        {"frames": info.frames, "fps": round(info.fps, 3), "width": info.width, "height": info.height,
                         "notes": info.notes}, str(sampling))


def plot_timeline(v: VideoVerdict, path: Path) -> Path:
    """p(fake) per sampled frame over time, the threshold and the video's score; frames with no face as x."""
    from dfk.metrics.plots import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3))
    t = [f.time_s for f in v.scored]
    p = [f.probability_fake for f in v.scored]
    ax.plot(t, p, "o-", color="tab:red", ms=4, label="p(fake) per frame")
    missing = [f.time_s for f in v.frames if f.probability_fake is None]
    if missing:
        ax.plot(missing, [0.0] * len(missing), "x", color="grey", label="no face")
    ax.axhline(v.threshold, color="black", ls="--", lw=1, label=f"threshold {v.threshold:.2f}")
    if v.probability_fake is not None:
        ax.axhline(v.probability_fake, color="tab:blue", lw=1, label=f"video ({v.aggregate}) {v.probability_fake:.2f}")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("p(fake)")
    ax.set_title(f"{Path(v.path).name or 'video'}: {v.label}", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    return save(fig, Path(path))


def write_timeline(v: VideoVerdict, folder: Path, stem: str) -> tuple[Path, Path]:
    """``<stem>.json`` (the verdict and its timeline) and ``<stem>.png`` (the plot) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    js = folder / f"{stem}.json"
    js.write_text(json.dumps(v.to_dict(), indent=1))
    return js, plot_timeline(v, folder / f"{stem}.png")


# ----------------------------------------------------------------------------- files and folders
def collect_media(inputs) -> list[Path]:
    """Image and video files named directly or found (recursively, hidden files skipped) in folders."""
    from dfk.data.decode import IMAGE_EXTENSIONS, collect_images
    from dfk.data.video import VIDEO_EXTENSIONS

    return collect_images(inputs, IMAGE_EXTENSIONS | VIDEO_EXTENSIONS, "image or video")


def score_picture(detector, data: bytes) -> dict:
    """One photo's verdict: a face model's faces (each scored) and the most fake; else the whole photo."""
    from dfk.data.views import decode_views
    from dfk.data.faces import load_for_faces
    from dfk.metrics.binary import verdict

    if detector.faces is not None:
        return detector.face_verdict(*detector.score_faces(load_for_faces(data)))
    native = getattr(detector, "native", False)
    p = float(detector.score_views([decode_views(data, detector.image_size, native).astype(np.float32)])[0])
    return {"probability_fake": p, "label": verdict(p, detector.threshold)}


def predict_images(detector, files, batch_size: int, on_skip=None, progress: Callable[[int], None] | None = None):
    """``(path, probability of fake, verdict)`` for each readable image, whole, scored in batches."""
    from dfk.data.views import ImageBatches
    from dfk.metrics.binary import verdict

    rows = []
    for names, x, n in ImageBatches(files, detector.image_size, batch_size, on_skip, getattr(detector, "native", False)):
        if names:
            probs = detector.score_views(x)
            rows += [(str(f), float(p), str(v)) for f, p, v in zip(names, probs, verdict(probs, detector.threshold))]
        if progress:
            progress(n)
    return rows


def predict_media(detector, files, batch_size: int, sampling: Sampling = Sampling(), how: str = AGGREGATES[0],
                  timelines: Path | None = None, on_skip=None, progress: Callable[[int], None] | None = None) -> list[dict]:
    """A record per readable file, in order: ``path``, ``kind`` (image or video), ``probability_fake``
    (None: a face model found no face), ``label``; a face model's ``faces``; a video's timeline written
    to ``timelines`` (``<stem>.json`` and ``.png``, numbered when two videos share a stem)."""
    from dfk.data.decode import BadImage, read_bytes
    from dfk.data.video import BadVideo, is_video

    records: dict[int, dict] = {}
    images = [(i, f) for i, f in enumerate(files) if not is_video(f)]
    if images and detector.faces is None:  # whole-image model: batched, as before
        at = {str(f): i for i, f in images}
        for path, p, label in predict_images(detector, [f for _, f in images], batch_size, on_skip, progress):
            records[at[path]] = {"path": path, "kind": "image", "probability_fake": p, "label": label}
    elif images:
        for i, f in images:
            try:
                records[i] = {"path": str(f), "kind": "image", **score_picture(detector, read_bytes(f))}
            except BadImage as exc:
                if on_skip:
                    on_skip(f, str(exc))
            if progress:
                progress(1)
    used: set[str] = set()
    for i, f in enumerate(files):
        if not is_video(f):
            continue
        try:
            v = score_video(detector, f, sampling, how=how, path=str(f))
        except BadVideo as exc:
            if on_skip:
                on_skip(f, str(exc))
            if progress:
                progress(1)
            continue
        rec = {"path": str(f), "kind": "video", "probability_fake": v.probability_fake, "label": v.label,
               "frames_sampled": len(v.frames), "frames_scored": len(v.scored), "notes": v.info["notes"]}
        if timelines is not None:
            stem, k = Path(f).stem, 1
            while stem in used:
                k += 1
                stem = f"{Path(f).stem}_{k}"
            used.add(stem)
            js, png = write_timeline(v, timelines, stem)
            rec.update(timeline_json=str(js), timeline_png=str(png))
        records[i] = rec
        if progress:
            progress(1)
    return [records[i] for i in sorted(records)]


# ----------------------------------------------------------------------------- evaluation
def video_folder(data_dir: str | Path, split: str = "test") -> list[tuple[Path, int]] | None:
    """``(video, label)`` for the videos of a Fake|Real folder (or its ``split`` of a Train|Validation|Test
    one); None when the folder holds no video (it is then a folder of images)."""
    from dfk.data.layout import CLASSES, SPLIT_ALIASES
    from dfk.data.video import is_video

    root = Path(data_dir)
    if not root.is_dir() or not any(is_video(p) and p.is_file() for p in root.rglob("*")):  # suffix first: no stat per image
        return None
    tops = {c.name.lower(): c for c in root.iterdir() if c.is_dir() and not c.name.startswith(".")}
    splits = {SPLIT_ALIASES[n]: c for n, c in tops.items() if n in SPLIT_ALIASES}
    if splits:
        if split not in splits:
            from dfk.errors import UserError

            raise UserError(f"{root} has no {split} split of videos (it has {', '.join(sorted(splits))})")
        root = splits[split]
        tops = {c.name.lower(): c for c in root.iterdir() if c.is_dir() and not c.name.startswith(".")}
    out = [(p, CLASSES[name]) for name, d in sorted(tops.items()) if name in CLASSES
           for p in sorted(d.rglob("*")) if p.is_file() and is_video(p)]
    if not out:
        from dfk.errors import UserError

        raise UserError(f"{root} holds videos but no Fake|Real folders of them; lay it out as Fake/*.mp4, Real/*.mp4")
    return out


@dataclass
class VideoScore:
    videos: object  # dfk.metrics.binary.Evaluation, one row per video (its aggregated score)
    frames: object  # the same, one row per scored frame, labelled with its video's label
    verdicts: list[VideoVerdict]
    skipped: list[tuple[str, str]]


def score_video_folder(detector, videos: list[tuple[Path, int]], sampling: Sampling = Sampling(),
                       how: str = AGGREGATES[0], progress: Callable[[int], None] | None = None) -> VideoScore:
    """Video-level and frame-level predictions of ``detector`` on labelled videos."""
    from dfk.data.video import BadVideo
    from dfk.errors import UserError
    from dfk.metrics.binary import evaluate_predictions

    verdicts, labels, skipped = [], [], []
    for path, y in videos:
        try:
            v = score_video(detector, path, sampling, how=how, path=str(path))
        except BadVideo as exc:
            skipped.append((str(path), str(exc)))
            continue
        finally:
            if progress:
                progress(1)
        if v.probability_fake is None:
            skipped.append((str(path), "no face found in any sampled frame"))
            continue
        verdicts.append(v)
        labels.append(y)
    if not verdicts:
        raise UserError("no video could be scored (see the skipped files)")
    video_eval = evaluate_predictions(labels, [v.probability_fake for v in verdicts], detector.threshold,
                                      [v.path for v in verdicts])
    fy = [y for v, y in zip(verdicts, labels) for _ in v.scored]
    fp = [f.probability_fake for v in verdicts for f in v.scored]
    fpaths = [f"{v.path}#{f.index}" for v in verdicts for f in v.scored]
    return VideoScore(video_eval, evaluate_predictions(fy, fp, detector.threshold, fpaths), verdicts, skipped)


def log_video_dataset(root: Path, videos: list[tuple[Path, int]], context: str = "evaluation") -> str:
    """The videos as an MLflow dataset input (path, label), with a digest of their names and sizes."""
    import hashlib

    import mlflow
    import pandas as pd

    rows = [{"path": str(p.relative_to(root)) if p.is_relative_to(root) else str(p), "label": y,
             "bytes": p.stat().st_size} for p, y in videos]
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
    df = pd.DataFrame(rows, columns=["path", "label", "bytes"])
    ds = mlflow.data.from_pandas(df, source=str(root), targets="label", name=root.name, digest=digest)
    mlflow.log_input(ds, context=context, tags={"videos": str(len(rows)), "fingerprint": digest})
    return digest
