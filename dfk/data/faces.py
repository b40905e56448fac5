"""One face front-end for every entry point: find faces, cut them by one crop rule.

Data preparation, training on face crops, ``dfk predict``, ``dfk evaluate``, the served model,
Grad-CAM and the app all call :func:`face_crops` on a picture decoded by :func:`load_for_faces`,
so a face is found and cut the same way wherever it is scored; a model trained on face crops
records its :class:`CropRule` (and the detector) in its metadata and scoring reads it back.

The detector is MTCNN (Zhang et al. 2016, the ``mtcnn`` package: P/R/O-Net on TensorFlow, its weights,
1.9 MB, inside the wheel, so nothing is downloaded at run time). Measured against OpenCV 4's Haar
cascade and dlib's HOG detector by ``bench.faces`` (docs/BENCHMARKS.md, docs/FACES.md): it finds
faces the others miss (small, turned, grey) with no false alarms, at the cost of speed.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np

#: The detector dfk ships; recorded in a face model's metadata.
DETECTOR = "mtcnn"
#: Faces are looked for in the picture shrunk so that its longer side is at most this (a 720p frame
#: is halved): detection time is bounded for any photo, and faces from ~20 px at this scale (~40 px
#: in a 720p frame) are found (bench.faces: 98% found at 640 px against 100% at full size, 1.5x faster).
DETECT_SIDE = 640
#: Pictures are decoded for faces at most this long a side: crops keep the detail a 1080p frame has,
#: and a 50 Mpx photo costs a 1920 px decode (JPEG decodes at a reduced scale).
SOURCE_SIDE = 1920
#: MTCNN's own last-stage threshold is 0.8; faces below this confidence are not scored.
MIN_CONFIDENCE = 0.9
#: At most this many faces of one picture are scored (the most confident first): bounded work per photo.
MAX_FACES = 16


@dataclass(frozen=True)
class Box:
    """A face found in a picture: pixels of the picture it was found in, and the detector's confidence."""

    x: int
    y: int
    w: int
    h: int
    score: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "score": round(float(self.score), 4)}


@dataclass(frozen=True)
class CropRule:
    """How a face is cut: the box grown by ``margin`` of its longer side on every side, made ``square``
    (around the box's centre, shifted to stay inside the picture), then resized to ``size`` px.

    Defaults: FaceForensics++'s crop (the face box scaled by 1.3 about its centre), square because
    models take squares (a non-square cut would be squeezed), and 256 px, the notebook's image size.
    """

    margin: float = 0.15
    square: bool = True
    size: int = 256

    def validate(self) -> None:
        from dfk.errors import UserError

        if not 0 <= self.margin <= 2:
            raise UserError(f"face margin must be between 0 and 2 (a fraction of the face's side), got {self.margin}")
        if not 16 <= self.size <= 1024:
            raise UserError(f"face crop size must be between 16 and 1024 px, got {self.size}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "detector": DETECTOR, "detect_side": DETECT_SIDE, "source_side": SOURCE_SIDE,
                "min_confidence": MIN_CONFIDENCE}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "CropRule | None":
        """The rule a model's metadata or a prepared folder's manifest records (None: whole images)."""
        if not d:
            return None
        names = {f.name for f in fields(cls)}
        return cls(**{k: type(getattr(cls, k))(v) for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------- detection
_DETECTOR = None
_LOCK = threading.Lock()


def _mtcnn():
    global _DETECTOR
    with _LOCK:
        if _DETECTOR is None:
            from mtcnn import MTCNN

            _DETECTOR = MTCNN(device="CPU:0")
        return _DETECTOR


def detect_faces(image: np.ndarray, max_faces: int = MAX_FACES) -> list[Box]:
    """Faces in an RGB uint8 picture (H, W, 3), the most confident first, at most ``max_faces``."""
    import cv2

    h, w = image.shape[:2]
    if min(h, w) < 24:  # below MTCNN's smallest window at any useful scale
        return []
    s = min(1.0, DETECT_SIDE / max(h, w))
    small = image if s == 1.0 else cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))),
                                              interpolation=cv2.INTER_AREA)
    detector = _mtcnn()
    with _LOCK:  # one detection at a time: the app's threads share the networks
        found = detector.detect_faces(np.ascontiguousarray(small))
    boxes = []
    for f in found:
        conf = float(f["confidence"])
        if conf < MIN_CONFIDENCE:
            continue
        x, y, bw, bh = (float(v) / s for v in f["box"])
        x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
        x1, y1 = min(w, int(round(x + bw))), min(h, int(round(y + bh)))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            boxes.append(Box(x0, y0, x1 - x0, y1 - y0, conf))
    boxes.sort(key=lambda b: -b.score)
    return boxes[:max_faces]


# ----------------------------------------------------------------------------- cropping
def crop_window(shape, box: Box, rule: CropRule) -> tuple[int, int, int, int]:
    """The region (x0, y0, x1, y1) of a picture of ``shape`` that ``rule`` cuts around ``box``."""
    h, w = shape[:2]
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    grow = rule.margin * max(box.w, box.h)
    if rule.square:
        side = min(max(box.w, box.h) + 2 * grow, w, h)
        bw = bh = side
    else:
        bw, bh = min(box.w + 2 * grow, w), min(box.h + 2 * grow, h)
    x0 = int(round(min(max(cx - bw / 2, 0), w - bw)))
    y0 = int(round(min(max(cy - bh / 2, 0), h - bh)))
    return x0, y0, x0 + max(1, int(round(bw))), y0 + max(1, int(round(bh)))


def crop(image: np.ndarray, box: Box, rule: CropRule) -> np.ndarray:
    """The face ``box`` of ``image`` cut by ``rule``: uint8 RGB, ``rule.size`` px a side when square."""
    import cv2

    x0, y0, x1, y1 = crop_window(image.shape, box, rule)
    region = image[y0:y1, x0:x1]
    if rule.square:
        size = (rule.size, rule.size)
    else:
        s = rule.size / max(region.shape[:2])
        size = (max(1, round(region.shape[1] * s)), max(1, round(region.shape[0] * s)))
    shrinking = region.shape[0] > size[1] or region.shape[1] > size[0]
    return np.ascontiguousarray(cv2.resize(region, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR))


def face_crops(image: np.ndarray, rule: CropRule, size: int | None = None,
               max_faces: int = MAX_FACES) -> tuple[list[Box], np.ndarray]:
    """The faces of ``image`` and their crops, (N, size, size, 3) uint8: cut by ``rule``, then resized to
    ``size`` (a model's input side) exactly as a prepared crop file is when a model trains on it."""
    from dfk.data.decode import resize

    boxes = detect_faces(image, max_faces)
    side = size or rule.size
    crops = [resize(crop(image, b, rule), side) for b in boxes]
    return boxes, (np.stack(crops) if crops else np.zeros((0, side, side, 3), np.uint8))


def load_for_faces(data: bytes) -> np.ndarray:
    """Image bytes decoded for face finding: upright, at most :data:`SOURCE_SIDE` px a side, within
    the decoder's memory budget. Every entry point decodes a photo for a face model with this."""
    from dfk.data.decode import decode_for_display

    return decode_for_display(data, SOURCE_SIDE)


def shrink(image: np.ndarray, side: int = SOURCE_SIDE) -> np.ndarray:
    """A decoded picture (a video frame) at most ``side`` px a side, as :func:`load_for_faces` leaves a photo."""
    import cv2

    h, w = image.shape[:2]
    s = side / max(h, w)
    if s >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


#: The file ``dfk data prepare`` writes at the top of a folder of face crops: the rule they were cut by.
MANIFEST = "faces.json"


def folder_rule(root) -> CropRule:
    """The crop rule of a prepared folder of face crops (its :data:`MANIFEST`), else the default rule:
    what a model trained there records, so scoring cuts faces as its training images were cut."""
    import json
    from pathlib import Path

    try:
        recorded = json.loads((Path(root) / MANIFEST).read_text()).get("crop_rule")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return CropRule.from_dict(recorded) or CropRule()
