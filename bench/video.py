"""Scoring a 720p video: frames per second, and the share of time in decoding, face detection and the model.

Writes the ``video`` section of docs/BENCHMARKS.md. The video is made here: 1280x720, 30 fps, 10 s,
mp4v (MPEG-4 part 2, what this OpenCV writes), a panning scene with two heads (the faces that ship
in installed packages). The model is the registry's ``cnn`` at the notebook's 256 px, untrained
(speed does not depend on its weights), wrapped in dfk's detector as a face model and as a
whole-image model. Stages are timed as :func:`dfk.evaluation.media.score_video` runs them: decode
(sample and convert the frames), detect (MTCNN on the frame shrunk to 640 px, and the crop), model
(batches of 32).

    python -m bench.video [--frames 16,64] [--arch cnn] [--size 256]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

SECONDS, FPS, SIZE = 10, 30, (1280, 720)


def make_video(path: Path) -> Path:
    """A 720p clip: two heads on a background photograph, panning 4 px a frame."""
    import cv2

    from bench.faces import _cover, backgrounds, face_sources, paste_head

    (astro, astro_box), (hopper, hopper_box), _ = face_sources()
    base = _cover(backgrounds()[0], SIZE[::-1])
    paste_head(base, hopper, hopper_box, 160, (150, 200), False, 1.0)
    paste_head(base, astro, astro_box, 200, (100, 700), False, 1.0)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    for i in range(SECONDS * FPS):
        out.write(np.ascontiguousarray(np.roll(base, 4 * i, axis=1)[..., ::-1]))
    out.release()
    return path


def detector(arch: str, size: int, faces: bool):
    from dfk.data.faces import CropRule
    from dfk.models import create_model
    from dfk.serving.detector import DeepfakeDetector

    model, _ = create_model(arch, size, "none")
    d = DeepfakeDetector()
    d.model, d.arch, d.image_size, d.threshold, d.temperature, d.batch_size = model, arch, size, 0.5, 1.0, 32
    d.faces = CropRule() if faces else None
    return d


def timed(d, video: Path, count: int) -> dict:
    """score_video's stages, timed one by one (the same calls, in the same order)."""
    from dfk.data.video import Sampling, VideoLimits, sample_frames
    from dfk.evaluation.media import frame_inputs

    t = {"decode": 0.0, "detect": 0.0, "model": 0.0}
    start = time.perf_counter()
    _, frames = sample_frames(video, Sampling(count=count), VideoLimits(max_samples=count))
    pending, n, faces = [], 0, 0
    while True:
        t0 = time.perf_counter()
        frame = next(frames, None)
        t["decode"] += time.perf_counter() - t0
        if frame is None:
            break
        t0 = time.perf_counter()
        boxes, inputs = frame_inputs(d, frame.image)
        t["detect"] += time.perf_counter() - t0
        faces += len(inputs)
        pending.append(inputs)
        n += 1
        if sum(map(len, pending)) >= d.batch_size:
            t0 = time.perf_counter()
            d.score(np.concatenate(pending).astype(np.float32))
            t["model"] += time.perf_counter() - t0
            pending = []
    if pending:
        t0 = time.perf_counter()
        d.score(np.concatenate(pending).astype(np.float32))
        t["model"] += time.perf_counter() - t0
    total = time.perf_counter() - start
    return {"frames": n, "faces": faces, "seconds": total, **t}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", default="16,64,300", help="frames sampled per run, comma-separated")
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    counts = [int(c) for c in args.frames.split(",")]
    rows = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "clip.mp4")
        mb = video.stat().st_size / 2**20
        for faces in (True, False):
            d = detector(args.arch, args.size, faces)
            timed(d, video, 4)  # warm-up: graphs built, MTCNN loaded
            for count in counts:
                r = timed(d, video, count)
                r.update(kind="face model" if faces else "whole-frame model", count=count)
                rows.append(r)
                print(f"{r['kind']}, {count} frames: {r['frames'] / r['seconds']:.1f} frames/s "
                      f"(decode {r['decode']:.2f} s, detect {r['detect']:.2f} s, model {r['model']:.2f} s)", flush=True)
    if not args.no_write:
        write(rows, args, mb, (load + os.getloadavg()[0]) / 2)


def write(rows, args, mb: float, load: float) -> None:
    from bench.report import write_section

    lines = [
        "## Scoring a video (`python -m bench.video`)",
        "",
        f"A {SECONDS} s 1280x720 clip at {FPS} fps (mp4v, {mb:.1f} MB) with two faces in every frame; the "
        f"`{args.arch}` architecture at {args.size} px, untrained, in dfk's detector as a face model (both faces "
        "found, cut and scored in each frame) and as a whole-frame model. Frames sampled evenly over the clip "
        "(300: every frame, decoded in sequence; fewer: reached by seeking). Shares of the wall time: decode "
        "(sample, seek, convert), detect (MTCNN on the frame shrunk to 640 px and the crops; for the "
        "whole-frame model, the resize), model (batches of 32 inputs). "
        f"Load average during the run: {load:.1f} on {os.cpu_count()} cores (other work shared the machine: "
        "figures on an idle machine are faster in proportion).",
        "",
        "| model | frames | frames / s | decode | detect | model | other |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        s = r["seconds"]
        other = s - r["decode"] - r["detect"] - r["model"]
        lines.append(f"| {r['kind']} | {r['frames']} | {r['frames'] / s:.1f} | {r['decode'] / s:.0%} | "
                     f"{r['detect'] / s:.0%} | {r['model'] / s:.0%} | {max(0.0, other) / s:.0%} |")
    face = [r for r in rows if r["kind"] == "face model"]
    if face:
        f = max(face, key=lambda r: r["frames"])
        lines += ["", f"Face detection dominates a face model's time ({f['detect'] / f['seconds']:.0%} at "
                  f"{f['frames']} frames): MTCNN and the crops cost ~{1000 * f['detect'] / f['frames']:.0f} ms a 720p "
                  f"frame, the model ~{1000 * f['model'] / max(1, f['faces']):.0f} ms a face; decoding is a few ms a "
                  "frame. The default of 16 frames a video (DeepfakeBench's fixed count) scores a clip of any "
                  "length in a few seconds."]
    write_section("video", "\n".join(lines))


if __name__ == "__main__":
    main()
