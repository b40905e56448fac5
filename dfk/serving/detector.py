"""The logged model: an MLflow pyfunc that takes image bytes and returns the probability of fake.

It carries the Keras model, its preprocessing (decode, convert to RGB, resize; the
architecture's own normalisation is a layer inside the Keras model) and the decision threshold
chosen on validation. A native-resolution model (its metadata's ``native_resolution``) is not
resized: it scores each picture as :func:`dfk.data.views.scoring_views` brings it, as every dfk
entry point does. Input: a DataFrame column ``image`` of raw image bytes, or base64 strings
of them (MLflow's JSON decoding of binary columns differs between request formats). Output per
row: ``probability_fake`` and ``label`` (``fake``/``real``).
"""

from __future__ import annotations

import base64
import contextlib
import binascii
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

import mlflow.pyfunc

from dfk.data.decode import BadImage, decode_image
from dfk.data.views import decode_views, scoring_views

IMAGE_COLUMN = "image"
KERAS_ARTIFACT = "keras_model"
META_ARTIFACT = "dfk_meta"


#: Leading bytes of the image formats the loader reads; anything else may be base64 text.
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")


class InvalidInput(ValueError):
    """A request row that cannot be scored; ``mlflow models serve`` answers it with HTTP 400."""


def _mlflow_bad_request(message: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def to_bytes(value: Any, row: int) -> bytes:
    """Accept raw bytes or a base64 string (either may arrive, depending on the request format)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        # A base64 string sent through a binary column arrives as its ASCII bytes.
        if not raw.startswith(_IMAGE_MAGIC) and _looks_base64(raw):
            try:
                return base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                pass
        return raw
    if isinstance(value, str):
        try:
            return base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"row {row}: column '{IMAGE_COLUMN}' is not valid base64") from None
    raise InvalidInput(f"row {row}: column '{IMAGE_COLUMN}' must hold image bytes or base64, got {type(value).__name__}")


def _looks_base64(raw: bytes) -> bool:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return False
    return len(text) % 4 == 0 and all(c.isalnum() or c in "+/=\n\r" for c in text)


class DeepfakeDetector(mlflow.pyfunc.PythonModel):
    """Image bytes in, ``probability_fake`` and ``label`` out."""

    # The model is logged with an explicit signature and ``predict`` checks its own input, so
    # MLflow's type-hint wrapping (and its "Add type hints" warning at import) is switched off.
    _skip_type_hint_validation = True
    #: The crop rule of a model trained on face crops (:class:`dfk.data.faces.CropRule`); None: whole images.
    faces = None
    #: Scores pictures at their own resolution (``ModelSpec.native_resolution``, recorded in the metadata).
    native = False
    _any_size = None

    def load_context(self, context) -> None:
        import keras

        import dfk.models.layers  # noqa: F401  registers dfk's custom layers for loading

        # safe_mode: a Lambda layer's pickled bytecode is refused, never run.
        self.model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False, safe_mode=True)
        meta = json.loads(Path(context.artifacts[META_ARTIFACT]).read_text())
        self.arch = str(meta.get("arch", ""))
        self.image_size = int(meta["image_size"])
        self.threshold = float(meta["threshold"])
        self.temperature = float(meta.get("temperature", 1.0))
        self.batch_size = int(meta.get("batch_size", 32))
        # A model logged before native resolution existed was trained on resized images: it is scored so.
        self.native = bool(meta.get("native_resolution", False))
        from dfk.data.faces import CropRule

        # A model trained on face crops finds and cuts faces by the rule it trained with; None: whole images.
        self.faces = CropRule.from_dict(meta.get("faces"))

    def decode_rows(self, images, first_row: int = 0):
        """Decode request rows to uint8 (N, size, size, 3), one at a time: memory grows with the rows
        decoded, never with what a request claims; a bad row raises :class:`InvalidInput` naming it.
        A native-resolution model's rows: a list of each row's views (:func:`dfk.data.views.decode_views`)."""
        out = []
        for i, value in enumerate(images, first_row):
            try:
                data = to_bytes(value, i)
                out.append(decode_views(data, self.image_size, True) if self.native else decode_image(data, self.image_size))
            except BadImage as exc:
                raise InvalidInput(f"row {i}: {exc}") from None
        if self.native:
            return out
        return np.stack(out) if out else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)

    def views(self, image: np.ndarray) -> np.ndarray:
        """A decoded picture (uint8, any size) as this model scores it: :func:`dfk.data.views.scoring_views`."""
        return scoring_views(image, self.image_size, self.native)

    @property
    def scoring_model(self):
        """The Keras model that scores views of any size (a native-resolution model's is re-wired on an
        input of any size, :func:`dfk.models.any_size.any_size_model`); any other model's is ``model``."""
        if not self.native:
            return self.model
        if self._any_size is None:
            from dfk.models.any_size import any_size_model

            self._any_size = any_size_model(self.model)
        return self._any_size

    def score_views(self, views) -> np.ndarray:
        """Probabilities of fake for pictures given as :meth:`views` (a list, one ``(k, H, W, 3)`` array
        each: the mean over a picture's views), or as a stacked (N, size, size, 3) batch as :meth:`score`.

        Views of equal shape go through the model together, :attr:`batch_size` at a time; a picture of
        its own size alone (a model's output for one image does not depend on its batch-mates)."""
        if isinstance(views, np.ndarray) or not self.native:
            return self.score(np.asarray(views) if isinstance(views, np.ndarray) else np.concatenate(views))
        model = self.scoring_model
        raw = [np.zeros(len(v)) for v in views]
        by_shape: dict[tuple, list[tuple[int, int]]] = {}
        for i, v in enumerate(views):
            by_shape.setdefault(v.shape[1:], []).extend((i, j) for j in range(len(v)))
        for items in by_shape.values():
            for start in range(0, len(items), self.batch_size):
                chunk = items[start:start + self.batch_size]
                x = np.stack([views[i][j] for i, j in chunk]).astype(np.float32)
                out = np.asarray(model(x, training=False)).reshape(-1)
                for (i, j), p in zip(chunk, out):
                    raw[i][j] = p
        return self.calibrated(np.array([r.mean() for r in raw]))

    def score(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities of fake for decoded RGB images (N, size, size, 3) in 0..255."""
        # Direct calls per chunk: Model.predict sets up a data pipeline on every call, which
        # costs more than the model itself for the few images a request carries. Each chunk is
        # made float32 on its own, so a request's float copy is one batch, not all its rows.
        chunks = [np.asarray(self.model(np.asarray(batch[i:i + self.batch_size], np.float32), training=False)).reshape(-1)
                  for i in range(0, len(batch), self.batch_size)]
        return self.calibrated(np.concatenate(chunks) if chunks else np.zeros(0))

    def score_faces(self, image: np.ndarray):
        """A face model's faces in a decoded picture (:func:`dfk.data.faces.load_for_faces`, or a video
        frame) and their probabilities of fake: ``(boxes, probabilities)``, cut by the model's rule."""
        from dfk.data.faces import face_crops

        boxes, crops = face_crops(image, self.faces, self.image_size)
        return boxes, (self.score(crops) if len(crops) else np.zeros(0))

    def face_verdict(self, boxes, probs) -> dict:
        """A picture's verdict from its faces: each face's box, probability and label, and the picture's
        (its most fake face); with no face, probability None and label ``no_face``: a face model does not
        score what it was not trained on."""
        from dfk.metrics.binary import verdict

        faces = [{**b.to_dict(), "probability_fake": float(p), "label": verdict(float(p), self.threshold)}
                 for b, p in zip(boxes, probs)]
        if not faces:
            return {"probability_fake": None, "label": NO_FACE, "faces": []}
        top = max(faces, key=lambda f: f["probability_fake"])
        return {"probability_fake": top["probability_fake"], "label": top["label"], "faces": faces}

    def calibrated(self, raw: np.ndarray) -> np.ndarray:
        """The served probability for the Keras model's raw sigmoid output (temperature applied)."""
        from dfk.metrics.binary import apply_temperature

        return apply_temperature(np.asarray(raw).reshape(-1), self.temperature)

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from dfk.metrics.binary import verdict
        from dfk.settings import SETTINGS

        if isinstance(model_input, dict):
            try:
                model_input = pd.DataFrame(model_input)
            except (ValueError, TypeError) as exc:  # e.g. {"image": "abc"}: scalars, no rows
                raise _mlflow_bad_request(f"input must have a column '{IMAGE_COLUMN}' of image bytes ({exc})") from None
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
            raise _mlflow_bad_request(f"input must have a column '{IMAGE_COLUMN}' of image bytes (base64 in JSON)")
        rows = len(model_input)
        if rows > SETTINGS.max_request_rows:
            raise _mlflow_bad_request(f"{rows} images in one request; the limit is {SETTINGS.max_request_rows} "
                                      "(send them in several requests)")
        if self.faces is not None:
            return self._predict_faces(list(model_input[IMAGE_COLUMN]))
        try:
            batch = self.decode_rows(list(model_input[IMAGE_COLUMN]))
        except InvalidInput as exc:
            raise _mlflow_bad_request(str(exc)) from None
        probs = self.score_views(batch)
        return pd.DataFrame({
            "probability_fake": probs.astype(np.float64),
            "label": verdict(probs, self.threshold),
        })

    def _predict_faces(self, images):
        """A face model's rows: the image's verdict (its most fake face), how many faces, and each face as
        JSON (box, probability, label) in ``faces``."""
        import pandas as pd

        from dfk.data.decode import BadImage
        from dfk.data.faces import load_for_faces

        verdicts = []
        for i, value in enumerate(images):
            try:
                picture = load_for_faces(to_bytes(value, i))
            except InvalidInput as exc:
                raise _mlflow_bad_request(str(exc)) from None
            except BadImage as exc:
                raise _mlflow_bad_request(f"row {i}: {exc}") from None
            verdicts.append(self.face_verdict(*self.score_faces(picture)))
        return pd.DataFrame({
            "probability_fake": pd.Series([v["probability_fake"] for v in verdicts], dtype=object),
            "label": [v["label"] for v in verdicts],
            "face_count": [len(v["faces"]) for v in verdicts],
            "faces": [json.dumps(v["faces"]) for v in verdicts],
        })


#: A face model's label for a picture in which it found no face.
NO_FACE = "no_face"

#: The environment a model is loaded in: no unpickling. A dfk model is code and a ``.keras`` file
#: (MLflow's models-from-code), so nothing of it needs pickle, and a pickled model is refused before
#: its payload can run.
SAFE_LOADING = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """``values`` in the environment for the block, each key put back as it was after. (unittest's
    ``patch.dict`` restores by clearing the whole environment first, which a heartbeat thread
    reading the tracking URI at that moment would see.)"""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_detector(model) -> DeepfakeDetector:
    """Load a logged or registered dfk model (``runs:/``, ``models:/name@alias`` or a local path, or
    one already resolved: :func:`dfk.serving.uri.resolve_model`) with pickle deserialization off and
    Keras' safe mode on."""
    from dfk.errors import UserError
    from dfk.serving.uri import resolve_model

    ref = resolve_model(model)
    try:
        with _environment(SAFE_LOADING):
            loaded = mlflow.pyfunc.load_model(ref.uri)
    except Exception as exc:  # MlflowException, OSError, ... : all mean "no such model"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model {ref.given!r}: {first[:200]}") from None
    detector = loaded.unwrap_python_model()
    if not isinstance(detector, DeepfakeDetector):
        raise UserError(f"{ref.given!r} is not a dfk model (it has no image-bytes detector inside)")
    return detector


def signature_and_example(example_image: bytes, faces: bool = False):
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame({IMAGE_COLUMN: [example_image]})
    output = pd.DataFrame({"probability_fake": [0.5], "label": ["fake"]})
    if faces:  # a face model also says how many faces it found and each one's verdict (JSON)
        output = output.assign(face_count=[1], faces=["[]"])
    return infer_signature(example, output), example


def log_detector(keras_path: str, meta: dict, example_image: bytes, name: str = "model"):
    """Log the pyfunc with its Keras file, metadata, dfk's code, signature and input example."""
    import warnings

    import dfk

    meta_path = Path(keras_path).with_suffix(".meta.json")
    meta_path.write_text(json.dumps(meta, indent=2))
    with warnings.catch_warnings():
        # MLflow's hint that an integer column cannot hold missing values: a face model's face_count never misses one.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature, example = signature_and_example(example_image, faces=bool(meta.get("faces")))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={KERAS_ARTIFACT: keras_path, META_ARTIFACT: str(meta_path)},
            code_paths=[str(Path(dfk.__file__).parent)],
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(faces=bool(meta.get("faces"))),
        )


def _requirements(faces: bool = False) -> list[str]:
    """The model's pip requirements: what trained it, at the versions it ran.

    TensorFlow is pinned as ``tensorflow``, whichever build trained the model (tensorflow-cpu here,
    tensorflow[and-cuda] on a GPU machine): on x86_64 Linux that is the CUDA build, which runs on a
    CPU and uses a GPU where NVIDIA's libraries are installed, so the environment ``mlflow models
    serve`` builds (virtualenv or uv) serves anywhere; pinning tensorflow-cpu would tie every server
    to the CPU. A GPU server adds the CUDA libraries itself (``pip install "tensorflow[and-cuda]==X"``
    in that environment), or serves with ``--env-manager local`` from ``pip install ".[gpu]"``.
    """
    from importlib.metadata import version

    pins = []
    face_dists = ("mtcnn", "lz4", "joblib") if faces else ()  # the face detector, for a face model only
    for dist in ("mlflow", "keras", "tensorflow", "numpy", "pandas", "pillow", "opencv-python-headless", "scikit-learn",
                 *face_dists):
        try:
            if dist == "tensorflow":  # the version of the build imported, whichever distribution installed it
                import tensorflow as tf

                pins.append(f"tensorflow=={tf.__version__}")
            else:
                pins.append(f"{dist}=={version(dist)}")
        except Exception:
            pass
    return pins
