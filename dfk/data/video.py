"""Frames sampled from a video, within bounds a long or hostile file cannot push past.

OpenCV's FFmpeg backend decodes (the wheel bundles FFmpeg: no other dependency), from a file or
from bytes in memory (its stream reader, so an upload never touches the disk). Before FFmpeg sees
anything, the container is checked from its first bytes: MP4/MOV, AVI, Matroska/WebM only (FFmpeg
knows hundreds of formats, some of which, like HLS playlists, open other files or URLs).

Sampling (:class:`Sampling`): a count of frames spread evenly over the video (the default, 16, as
DeepfakeBench samples a fixed number of frames per video), or a rate (``2fps``). Far-apart frames
are reached by seeking, so a long video costs the frames asked for, not its length. Bounds
(:class:`VideoLimits`): frame size from the header, frames sampled, frames decoded and seconds spent;
a video past them is refused with one line, or sampled up to the bound and said so.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

#: File extensions read as videos (lower case).
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm"})
_FORMATS_TEXT = "MP4, MOV, AVI, MKV or WebM"


class BadVideo(ValueError):
    """Bytes or a file that is not a usable video; the message says why."""


class VideoTooLarge(BadVideo):
    """A video past :class:`VideoLimits`, refused before its frames are decoded."""


@dataclass(frozen=True)
class Sampling:
    """Which frames to score: ``count`` frames spread evenly over the video, or ``fps`` frames a second."""

    count: int = 16
    fps: float | None = None

    @classmethod
    def parse(cls, text: str | int | None) -> "Sampling":
        """``"16"`` (frames per video) or ``"2fps"`` (frames per second)."""
        from dfk.errors import UserError

        raw = str(text if text is not None else cls.count).strip().lower()
        try:
            if raw.endswith("fps"):
                fps = float(raw[:-3])
                if not 0 < fps <= 60:
                    raise ValueError
                return cls(count=0, fps=fps)
            count = int(raw)
            if count < 1:
                raise ValueError
            return cls(count=count)
        except ValueError:
            raise UserError(f"frames {text!r}: give a count of frames per video (16) or a rate (2fps, at most 60)") from None

    def __str__(self) -> str:
        return f"{self.fps:g}fps" if self.fps else str(self.count)


@dataclass(frozen=True)
class VideoLimits:
    #: Pixels of one frame, from the header: 4K UHD. Larger frames are refused before any is decoded.
    max_pixels: int = 3840 * 2160
    #: Frames scored per video at most, whatever the sampling asks (a rate on a long video).
    max_samples: int = 64
    #: Frames decoded (grabbed) per video at most, seeks aside: 10 minutes at 30 fps read end to end.
    max_decoded: int = 18_000
    #: Seconds spent decoding one video at most; the frames sampled by then are scored.
    seconds: float = 120.0


@dataclass
class Frame:
    index: int  # frame number in the video
    time_s: float  # its time, from the frame rate
    image: np.ndarray  # RGB uint8, full size


@dataclass
class VideoInfo:
    frames: int  # as the header says (0: unknown)
    fps: float
    width: int
    height: int
    notes: list[str] = field(default_factory=list)  # bounds reached while sampling

    @property
    def seconds(self) -> float:
        return self.frames / self.fps if self.frames > 0 and self.fps > 0 else 0.0


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def container(head: bytes) -> str | None:
    """The container named by a file's first bytes, or None: mp4 (MP4/MOV/M4V), avi, or mkv (Matroska/WebM)."""
    if len(head) >= 12 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return "mp4"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "mkv"
    return None


def looks_like_video(head: bytes) -> bool:
    return container(head) is not None


class _Capture:
    """A ``cv2.VideoCapture`` and the stream it reads: OpenCV does not keep the Python stream object alive,
    and a capture whose stream was collected crashes the process when it next reads or is released."""

    def __init__(self, cap, stream=None) -> None:
        self.cap, self.stream = cap, stream

    def __getattr__(self, name):
        return getattr(self.cap, name)


def _quiet(cv2) -> None:
    """FFmpeg's and OpenCV's warnings about a broken file (the one-line BadVideo says it) off, unless asked for."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read when FFmpeg opens a file
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _open(source: bytes | str | os.PathLike) -> _Capture:
    import cv2

    _quiet(cv2)

    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise BadVideo("empty file")
        head = data[:16]
    else:
        try:
            with open(source, "rb") as fh:
                head = fh.read(16)
        except OSError as exc:
            raise BadVideo(f"cannot read file ({exc.strerror})") from None
        if not head:
            raise BadVideo("empty file")
    if container(head) is None:
        raise BadVideo(f"not a video dfk reads ({_FORMATS_TEXT})")
    stream = io.BytesIO(data) if isinstance(source, (bytes, bytearray, memoryview)) else None
    try:
        if stream is not None:
            cap = _Capture(cv2.VideoCapture(stream, cv2.CAP_FFMPEG, []), stream)
        else:
            cap = _Capture(cv2.VideoCapture(str(source), cv2.CAP_FFMPEG))
    except cv2.error as exc:
        raise BadVideo(f"cannot open video ({str(exc).strip().splitlines()[-1][:80]})") from None
    if not cap.isOpened():
        cap.release()
        raise BadVideo("cannot open video (corrupt or truncated file, or a codec FFmpeg lacks)")
    return cap


def _info(cap) -> VideoInfo:
    import cv2

    n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    fps = cap.get(cv2.CAP_PROP_FPS)
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    frames = int(n) if np.isfinite(n) and 0 < n < 2**31 else 0
    return VideoInfo(frames, float(fps) if np.isfinite(fps) and 0 < fps < 1000 else 25.0, w, h)


def wanted_indices(info: VideoInfo, sampling: Sampling, limits: VideoLimits) -> list[int] | None:
    """Frame numbers to score, or None when the header does not say how many frames there are."""
    if info.frames <= 0:
        return None
    n = sampling.count if not sampling.fps else max(1, int(info.seconds * sampling.fps))
    if n > limits.max_samples:
        info.notes.append(f"{n} frames asked for; {limits.max_samples} spread over the video scored (the limit)")
        n = limits.max_samples
    elif sampling.fps:  # at the rate asked, from the first frame
        step = info.fps / sampling.fps
        return sorted({min(info.frames - 1, int(round(i * step))) for i in range(n)})
    return sorted({int(round(i)) for i in np.linspace(0, info.frames - 1, min(n, info.frames))})


def sample_frames(source: bytes | str | os.PathLike, sampling: Sampling = Sampling(),
                  limits: VideoLimits = VideoLimits(), indices=None) -> tuple[VideoInfo, Iterator[Frame]]:
    """The video's header facts and an iterator over its sampled frames (or the frames numbered
    ``indices``, ascending: those a verdict names, read again to explain them), one decoded at a time.

    Raises :class:`BadVideo` (or :class:`VideoTooLarge`) for a file that cannot be opened or whose
    frames are past the limit; the iterator raises :class:`BadVideo` when no frame at all decodes."""
    cap = _open(source)
    info = _info(cap)
    if info.width * info.height > limits.max_pixels:
        cap.release()
        raise VideoTooLarge(f"video frames of {info.width}x{info.height} exceed the "
                            f"{limits.max_pixels / 1e6:.1f} Mpx limit (4K)")
    wanted = sorted(set(indices)) if indices is not None else wanted_indices(info, sampling, limits)
    return info, _frames(cap, info, sampling, limits, wanted)


def _frames(cap, info: VideoInfo, sampling: Sampling, limits: VideoLimits, wanted) -> Iterator[Frame]:
    import cv2

    # Unknown length: read on, one frame every half second (or at the rate asked), up to the samples asked.
    stride = max(1, int(round(info.fps / (sampling.fps or 2.0))))
    budget = sampling.count if not sampling.fps else limits.max_samples
    budget = min(budget, limits.max_samples)
    deadline = time.monotonic() + limits.seconds
    pos, decoded, given = 0, 0, 0
    try:
        targets = iter(wanted) if wanted is not None else (i * stride for i in range(budget))
        for target in targets:
            if time.monotonic() > deadline:
                info.notes.append(f"stopped after {limits.seconds:g} s of decoding; {given} frames scored")
                break
            if target - pos > 30:  # far ahead: seek (FFmpeg decodes from the key frame before it)
                cap.set(cv2.CAP_PROP_POS_FRAMES, target)
                pos = target
            ok = True
            while pos < target and ok:
                ok = cap.grab()
                pos += 1
                decoded += 1
                if decoded > limits.max_decoded:
                    ok = False
                    info.notes.append(f"stopped after decoding {limits.max_decoded} frames")
            if not ok:
                break
            ok, bgr = cap.read()
            pos += 1
            decoded += 1
            if not ok or bgr is None:
                if given:
                    info.notes.append(f"the video ended at frame {pos - 1} (truncated, or its header overstates its length)")
                break
            if bgr.shape[0] * bgr.shape[1] > limits.max_pixels:
                raise VideoTooLarge(f"video frames of {bgr.shape[1]}x{bgr.shape[0]} exceed the "
                                    f"{limits.max_pixels / 1e6:.1f} Mpx limit (4K)")
            rgb = np.ascontiguousarray(bgr[..., ::-1] if bgr.ndim == 3 else np.repeat(bgr[..., None], 3, axis=2))
            given += 1
            yield Frame(target, target / info.fps, rgb)
        if not given:
            raise BadVideo("no frame could be decoded (a video with no frames, or a corrupt or truncated file)")
    finally:
        cap.release()
