"""The one typed training configuration.

Every default lives here and only here: the CLI (``-P key=value``), the MLproject entry points
(rendered from this class by :mod:`dfk.cli.mlproject`) and the Optuna search all produce a
:class:`TrainConfig`. Overrides are strict: an unknown key or a value of the wrong type fails
with one line naming the problem.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Mapping

from dfk.errors import UserError

#: Values of TrainConfig.strategy (what each does: :mod:`dfk.training.devices`).
STRATEGIES = ("default", "mirrored")
#: Values of TrainConfig.mixed_precision; "auto" is resolved by :func:`dfk.training.devices.resolve_mixed_precision`.
MIXED_PRECISION = ("auto", "on", "off")

#: Augmentations the training pipeline knows, in the order they are applied.
AUGMENTATIONS = ("flip", "rotation", "zoom", "brightness", "jpeg", "blur")

#: ``data_dir`` value that selects the built-in synthetic forgery set (generated once, cached).
BUILTIN_DATA = "builtin"


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Field comments say why each default is what it is."""

    # Which architecture from the registry (``dfk.models``) to build.
    arch: str = "cnn"
    # Image folder in the Kaggle layout (Train|Validation|Test / Fake|Real) or a flat Fake|Real
    # folder; "builtin" uses the synthetic forgery set so every command works with no download.
    data_dir: str = BUILTIN_DATA
    # Fraction held out for validation, and again for test, when the folder has no splits.
    val_split: float = 0.2
    # auto: the original notebook's 256x256 for a folder of images, and the built-in set's native
    # size for "builtin" (resizing would re-sample away the traces its forgeries leave).
    image_size: int | None = None
    # The notebook's batch size, per device: with strategy=mirrored each step takes batch_size x replicas.
    batch_size: int = 32
    # Upper bound; early stopping may end the run earlier. From scratch, the built-in set takes
    # about this many epochs to learn (docs/BENCHMARKS.md).
    epochs: int = 16
    # auto: the architecture's own (Adam's default 1e-3, as the notebook used Adam() unchanged;
    # 2e-3 for the forensic detectors, whose BatchNorm trunk takes the larger step).
    learning_rate: float | None = None
    # The notebook's EarlyStopping(patience=5) on val_loss, best weights restored.
    patience: int = 5
    # Early stopping judges nothing before this epoch: a model trained from scratch sits at chance for
    # its first epochs; 0 is the notebook's (judged from the first epoch).
    warmup_epochs: int = 5
    # Halve the learning rate after each epoch (after the warm-up) that does not improve val_loss for
    # this many epochs (ReduceLROnPlateau); 0 keeps it constant as the notebook did.
    lr_patience: int = 1
    # auto | imagenet | dfk | none | backbone:PATH | model:PATH. auto: dfk's own pre-trained weights for an
    # architecture it ships them for (the forensic detectors; offline, checked by their digest), else ImageNet weights when
    # Keras has them cached (dfk weights fetch) or can download them, else random; imagenet: the same, an
    # error offline; dfk: dfk's own, an error for an architecture without. backbone:PATH: a no-top Keras
    # weights file for a transfer model's backbone; model:PATH: the whole model's weights (Model.save_weights)
    # for a model trained from scratch; a bare PATH: whichever of the two the architecture takes.
    weights: str = "auto"
    # Starting from pretrained weights, phase 2 unfreezes this many trunk layers (from the end) after the head
    # learnt on the frozen trunk; auto: the architecture's own, 0: for ImageNet backbones the notebook's frozen
    # ResNet, for the forensic detectors from dfk's weights no frozen phase (the whole net trains from them).
    fine_tune_at: int | None = None
    # Phase 2's learning rate; auto: the architecture's own (1e-5, small enough not to destroy ImageNet
    # features; 2e-4 for the forensic detectors' small trunk).
    fine_tune_lr: float | None = None
    # Length of the second (fine-tuning) phase.
    fine_tune_epochs: int = 5
    # Head dropout; None keeps the architecture's own default (0.5 for cnn, 0.3 for the rest).
    dropout: float | None = None
    # Units of the head's Dense layer; None keeps the architecture's own default (512).
    dense_units: int | None = None
    # Comma-separated training-only augmentations; the notebook used horizontal flips.
    augment: str = "flip"
    # Rotation range as a fraction of a full turn (keras RandomRotation's factor).
    aug_rotation: float = 0.05
    # Zoom range as a fraction of the image (keras RandomZoom's factor).
    aug_zoom: float = 0.1
    # Maximum brightness shift on the 0..1 scale.
    aug_brightness: float = 0.1
    # Lowest JPEG quality for re-encoding; detectors trained without it collapse on recompressed images.
    aug_jpeg_quality: int = 50
    # Largest Gaussian blur sigma in pixels.
    aug_blur_sigma: float = 1.5
    # Decision threshold: 0 picks the equal-error-rate point on validation; else this false-positive rate.
    target_fpr: float = 0.0
    # Fit a temperature on validation so probabilities mean what they say; off as in the notebook.
    calibrate: bool = False
    # default: TensorFlow's own placement (one device); mirrored: tf.distribute.MirroredStrategy over every
    # local GPU (every logical CPU when there is none); the learning rate is not scaled with the global batch.
    strategy: str = "default"
    # auto: on when a GPU is present; on: mixed_float16 (float16 compute, float32 weights and output); off: float32.
    mixed_precision: str = "auto"
    # Seeds Python, NumPy and TensorFlow, the shuffling and the built-in set's split.
    seed: int = 42
    # Test images shown in the Grad-CAM gallery of each run.
    gradcam_images: int = 8
    # Train on face crops (a folder `dfk data prepare` wrote): the model records the folder's crop rule and
    # scoring finds and cuts faces the same way, one verdict per face; off: whole images, as the notebook.
    faces: bool = False

    def __post_init__(self) -> None:
        # Fields left to "auto" are resolved here and remembered, so that replace(arch=...) resolves
        # them again for the new architecture instead of keeping the old one's values.
        object.__setattr__(self, "_auto", frozenset(k for k in AUTO_FIELDS if getattr(self, k) is None))
        if self.image_size is None:
            object.__setattr__(self, "image_size", default_image_size(self.data_dir, self.arch))
        for name in ("learning_rate", "fine_tune_at", "fine_tune_lr"):  # the architecture's own
            if getattr(self, name) is None:
                from dfk.models import get_spec

                object.__setattr__(self, name, getattr(get_spec(self.arch), name))

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> "TrainConfig":
        """Build a config from defaults plus overrides; strings are parsed to the field's type.

        ``None`` values are ignored, so an unset CLI option never hides a default.
        """
        merged = {**(overrides or {}), **{k: v for k, v in kwargs.items() if v is not None}}
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(merged) - set(known))
        if unknown:
            raise UserError(
                f"unknown parameter {', '.join(map(repr, unknown))}; valid parameters: {', '.join(known)}"
            )
        hints = typing.get_type_hints(cls)
        values = {k: _coerce(k, v, hints[k]) for k, v in merged.items() if v is not None}
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied and checked like any override; "auto" fields stay auto."""
        return TrainConfig.from_overrides({**self.to_dict(), **{k: None for k in self._auto}, **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @property
    def augmentations(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.augment.split(",") if a.strip() and a.strip() != "none")

    def validate(self) -> None:
        """Reject values no run could use, with the allowed range in the message."""
        from dfk.models import get_spec  # light: the registry imports no TensorFlow

        spec = get_spec(self.arch)
        if self.weights == "dfk":  # before any run: an architecture dfk ships no weights for
            from dfk.models.weights import manifest, no_shipped_weights

            _check(self.arch in manifest(), str(no_shipped_weights(self.arch)))
        _check(self.image_size >= spec.min_image_size,
               f"image_size={self.image_size} is too small for {self.arch}; use at least {spec.min_image_size}")
        _check(self.image_size <= 1024, f"image_size={self.image_size} is too large; use at most 1024")
        for name in ("batch_size", "epochs"):
            _check(getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("patience", "warmup_epochs", "lr_patience", "fine_tune_at", "fine_tune_epochs", "gradcam_images"):
            _check(getattr(self, name) >= 0, f"{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("learning_rate", "fine_tune_lr"):
            v = getattr(self, name)
            _check(0 < v < 1, f"{name} must be between 0 and 1, got {v}")
        _check(0 < self.val_split < 0.5, f"val_split must be between 0 and 0.5, got {self.val_split}")
        _check(0 <= self.target_fpr < 1, f"target_fpr must be in [0, 1), got {self.target_fpr}")
        if self.dropout is not None:
            _check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        if self.dense_units is not None:
            _check(self.dense_units >= 1, f"dense_units must be at least 1, got {self.dense_units}")
        _check(self.strategy in STRATEGIES,
               f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        _check(self.mixed_precision in MIXED_PRECISION,
               f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        bad = [a for a in self.augmentations if a not in AUGMENTATIONS]
        _check(not bad, f"unknown augmentation {', '.join(bad)}; choose from {', '.join(AUGMENTATIONS)} or none")
        _check(0 <= self.aug_rotation <= 0.5, f"aug_rotation must be in [0, 0.5], got {self.aug_rotation}")
        _check(0 <= self.aug_zoom < 1, f"aug_zoom must be in [0, 1), got {self.aug_zoom}")
        _check(0 <= self.aug_brightness <= 1, f"aug_brightness must be in [0, 1], got {self.aug_brightness}")
        _check(1 <= self.aug_jpeg_quality <= 100, f"aug_jpeg_quality must be in [1, 100], got {self.aug_jpeg_quality}")
        _check(0 <= self.aug_blur_sigma <= 10, f"aug_blur_sigma must be in [0, 10], got {self.aug_blur_sigma}")
        _check(not (self.faces and self.data_dir == BUILTIN_DATA),
               "faces=true needs a folder of face crops (dfk data prepare SRC OUT writes one); the built-in set has no faces")


#: Fields whose None default means "the architecture's or the data's own", resolved on construction.
AUTO_FIELDS = ("image_size", "learning_rate", "fine_tune_at", "fine_tune_lr")
#: How the CLI and the MLproject spell such a default.
AUTO = "auto"

#: The original notebook's training size, for a folder of the user's own images.
NOTEBOOK_IMAGE_SIZE = 256
#: The built-in set's native side in pixels: small enough to train from scratch on a CPU in minutes.
BUILTIN_IMAGE_SIZE = 64


def default_image_size(data_dir: str, arch: str) -> int:
    """The image size a run uses when none is given: native for the built-in set (or the smallest
    the architecture accepts), else the notebook's."""
    if data_dir != BUILTIN_DATA:
        return NOTEBOOK_IMAGE_SIZE
    from dfk.models import get_spec

    return max(BUILTIN_IMAGE_SIZE, get_spec(arch).min_image_size)


def parse_pairs(pairs: Iterable[str], bad: Callable[[str], str]) -> dict[str, str]:
    """``["key=value", ...]`` -> ``{key: value}``; a pair without ``=`` or key fails with ``bad(pair)``."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(bad(pair))
        out[key.strip()] = value
    return out


def field_comments(cls: type = None) -> dict[str, str]:
    """The "why" comment above each field of ``cls`` (default :class:`TrainConfig`), for
    ``dfk params`` and the rendered MLproject."""
    import inspect

    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls or TrainConfig).splitlines():
        s = line.strip()
        if s.startswith("# ") and not s.startswith("# ---"):
            pending.append(s[2:])
        elif ":" in s and not s.startswith(("def", "@", "class", '"', "#")) and pending:
            comments[s.split(":")[0].strip()] = " ".join(pending)
            pending = []
        else:
            pending = []
    return comments


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Parse ``value`` into the field's type; strings come from the CLI and MLproject."""
    args = typing.get_args(hint)
    optional = type(None) in args
    target = next((a for a in args if a is not type(None)), hint) if args else hint
    if optional and isinstance(value, str) and value.strip().lower() in ("", "none", AUTO, "default"):
        return None
    try:
        if target is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if target is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str):
                value = value.strip()
                as_float = float(value)
                if not as_float.is_integer():
                    raise ValueError
                return int(as_float)
            return int(value)
        if target is float:
            out = float(value)
            if out != out:  # NaN
                raise ValueError
            return out
        return str(value)
    except (TypeError, ValueError):
        raise UserError(f"parameter {name}={value!r} is not a valid {target.__name__}") from None


def parse_archs(archs: str, base: TrainConfig) -> list[TrainConfig]:
    """One config per comma-separated entry of ``archs``; every bad entry fails before any run."""
    configs = []
    for entry in (e.strip() for e in archs.split(",")):
        if not entry:
            continue
        arch, *pairs = entry.split(":")
        overrides = parse_pairs(pairs, lambda _: f"archs entry {entry!r}: write overrides as arch:key=value[:key=value]")
        configs.append(base.replace(arch=arch.strip(), **{k: v.strip() for k, v in overrides.items()}))
    if not configs:
        raise UserError("archs is empty; name at least one architecture (see `dfk models`)")
    return configs
