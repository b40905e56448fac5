"""Grad-CAM for every architecture in the registry, batched, with scores (its overlays and galleries are
drawn by :mod:`dfk.explain.gallery`).

The heatmap is Grad-CAM of the *fake* score: the last convolutional feature map (or, for the
ViT, the last encoder block's patch tokens on their grid) weighted by the spatial mean of the
gradient of the fake logit. One gradient pass serves a whole batch.

Keras 3 cannot build ``keras.Model(model.inputs, [backbone.get_layer(...).output, ...])`` when
the backbone is nested (keras-io issue 1999, "Graph disconnected"). For models with a nested
``backbone`` layer the gradient function instead calls the backbone as a sub-model that returns
its target layer too, then applies the outer model's remaining layers in order.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dfk.errors import UserError
from dfk.explain.gallery import GALLERY_ROWS, overlay, save_gallery
from dfk.models import BACKBONE, TOKEN_POOL


# ----------------------------------------------------------------------------- gradient model
#: The default target layer is the last whose map is at least this many cells a side at the
#: trained size: a coarser map (ResNet50's last block is 2x2 at 64 px) cannot point at a region.
MIN_GRID = 8

#: Layers whose output is a feature map worth explaining (not inputs, pooling or preprocessing).
_CONV_LAYERS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D")
_MAP_LAYERS = (*_CONV_LAYERS, "Activation", "ReLU", "Add", "BatchNormalization")


def _feature_maps(layers, kinds: tuple[str, ...] = _MAP_LAYERS) -> list[tuple[str, int]]:
    """``(name, grid side)`` of the layers of ``kinds`` that produce 4-D feature maps, in order."""
    out = []
    for layer in layers:
        if type(layer).__name__ not in kinds:
            continue
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # a layer called more than once has no single output
            continue
        if len(shape) == 4 and shape[1]:
            out.append((layer.name, int(min(shape[1], shape[2]))))
    return out


def default_layer(model) -> str | None:
    """The Grad-CAM target of ``model``: the last convolution whose map has at least :data:`MIN_GRID`
    cells a side (for transfer models, the last such feature map inside the nested backbone), the
    last encoder block's tokens for a transformer; None means the backbone's output."""
    names = [layer.name for layer in model.layers]
    if BACKBONE in names:
        maps = _feature_maps(model.get_layer(BACKBONE).layers)
        fine = [name for name, grid in maps if grid >= MIN_GRID]
        return fine[-1] if fine else None
    if TOKEN_POOL in names and len(model.get_layer(TOKEN_POOL).input.shape) == 3:
        return _inbound_name(model.get_layer(TOKEN_POOL))  # transformer: tokens that enter the head
    # A flat model's own convolutions: measured on srm at 64 px, its last convolution points into the
    # forged region for 86% of test fakes, the ReLU after its BatchNorm for 55% (centre prior: 64%).
    maps = _feature_maps(model.layers, _CONV_LAYERS)
    if not maps:
        raise UserError(f"model {model.name} has no convolutional or token layer for Grad-CAM; name one with --layer")
    fine = [name for name, grid in maps if grid >= MIN_GRID]
    return fine[-1] if fine else maps[-1][0]


def _inbound_name(layer) -> str:
    node = layer._inbound_nodes[0]
    return node.parent_nodes[0].operation.name if node.parent_nodes else layer.name


def gradient_function(model, layer: str | None = None) -> Callable:
    """``f(images) -> (feature_map, logit_fake)``, differentiable, for any registry model.

    Gradients are taken of the final layer's logit, not of the sigmoid: a saturated probability
    has a vanishing gradient and would give a blank map.
    """
    import keras
    from keras import ops

    names = [x.name for x in model.layers]
    final = model.layers[-1]

    def logit(x):
        return ops.matmul(x, final.kernel) + final.bias

    if BACKBONE in names:
        backbone = model.get_layer(BACKBONE)
        layer = layer or default_layer(model)
        try:
            target = backbone.output if layer is None else backbone.get_layer(layer).output
        except ValueError:
            raise UserError(f"layer {layer!r} is not in the {model.name} backbone") from None
        inner = keras.Model(backbone.inputs, [target, backbone.output])
        index = names.index(BACKBONE)
        before, after = model.layers[1:index], model.layers[index + 1:-1]

        def run(x):
            for lay in before:
                x = lay(x, training=False)
            feat, x = inner(x, training=False)
            for lay in after:
                x = lay(x, training=False)
            return feat, logit(x)

        return run
    target_name = layer or default_layer(model)
    try:
        target = model.get_layer(target_name).output
    except ValueError:
        raise UserError(f"layer {target_name!r} is not in model {model.name}; choose one of "
                        f"{', '.join(n for n in names if not n.startswith('head'))}") from None
    sub = keras.Model(model.inputs, [target, final.input])

    def run_flat(x):
        feat, h = sub(x, training=False)
        return feat, logit(h)

    return run_flat


# ----------------------------------------------------------------------------- heatmaps
def gradcam(model, images: np.ndarray, layer: str | None = None, fn: Callable | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps in [0, 1] at the images' size and the fake probabilities, in one gradient pass."""
    import cv2
    import tensorflow as tf

    fn = fn or gradient_function(model, layer)
    x = tf.convert_to_tensor(np.asarray(images, np.float32))
    with tf.GradientTape() as tape:
        feat, logit = fn(x)
        tape.watch(feat)
        score = tf.reduce_sum(logit)  # samples are independent, so one sum gives per-sample gradients
    grads = tape.gradient(score, feat)
    prob = tf.sigmoid(logit)
    feat, grads = feat.numpy(), grads.numpy()
    if feat.ndim == 3:  # tokens (N, T, C) -> grid (N, g, g, C)
        g = int(math.isqrt(feat.shape[1]))
        feat = feat[:, -g * g:].reshape(len(feat), g, g, -1)
        grads = grads[:, -g * g:].reshape(len(grads), g, g, -1)
    weights = grads.mean(axis=(1, 2), keepdims=True)
    raw = (weights * feat).sum(axis=-1)
    cams = np.maximum(raw, 0)
    h, w = images.shape[1:3]
    out = np.zeros((len(images), h, w), np.float32)
    for i, cam in enumerate(cams):
        if cam.max() <= 0:
            # Nothing speaks for "fake": show where the evidence is strongest either way rather
            # than a blank map.
            cam = np.abs(raw[i])
        cam = cam - cam.min()
        if cam.max() > 0:
            cam = cam / cam.max()
        out[i] = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return out, prob.numpy().reshape(-1)


def detector_gradient_function(detector, layer: str | None = None) -> Callable:
    """:func:`gradient_function` of the model that scores ``detector``'s views: a native-resolution
    model's takes pictures of any size (its target layer chosen on the model as trained)."""
    if not getattr(detector, "native", False):
        return gradient_function(detector.model, layer)
    return gradient_function(detector.scoring_model, layer or default_layer(detector.model))


def gradcam_views(views: np.ndarray, fn: Callable) -> tuple[np.ndarray, float]:
    """Grad-CAM of one picture as scored, from its views (:func:`dfk.data.views.scoring_views`): the
    heatmap at the view's size and the raw probability of fake (the mean over the views). Whole-picture
    scoring has one view, so the map covers the picture as scored; of several crops, the crops' maps are
    averaged (their grid is not kept)."""
    heat, prob = gradcam(None, np.asarray(views, np.float32), fn=fn)
    return heat.mean(axis=0), float(prob.mean())


@dataclass
class Explained:
    written: int  # overlays written
    skipped: int  # unreadable files
    gallery: Path


def explain_files(detector, files, out: Path, layer: str | None = None, batch_size: int = 16,
                  on_written=None, on_skip=None) -> Explained:
    """An overlay PNG per readable image file in ``out`` (the same stem twice gets a counter) and one
    gallery of the first :data:`GALLERY_ROWS`; ``on_written(path, p, verdict, overlay path)`` per image."""
    from PIL import Image

    from dfk.data.views import ImageBatches
    from dfk.metrics.binary import verdict

    fn = detector_gradient_function(detector, layer)
    out.mkdir(parents=True, exist_ok=True)
    if getattr(detector, "faces", None) is not None:
        return _explain_face_files(detector, files, out, fn, on_written, on_skip)
    native = getattr(detector, "native", False)
    used: set[str] = set()
    gallery: list[tuple] = []  # only the rows the gallery shows stay in memory
    written = 0
    batches = ImageBatches(files, detector.image_size, batch_size, on_skip, native)
    for names, x, _ in batches:
        if not names:
            continue
        if native:  # each picture as scored, alone: its size is its own
            h, p = zip(*(gradcam_views(v, fn) for v in x))
            x = [v[0] for v in x]
        else:
            h, p = gradcam(detector.model, x, fn=fn)
        p = detector.calibrated(np.asarray(p))  # report what the served model reports
        for f, img, hm, prob in zip(names, x, h, p):
            name, k = f"{f.stem}_gradcam.png", 1
            while name in used:
                k += 1
                name = f"{f.stem}_{k}_gradcam.png"
            used.add(name)
            Image.fromarray(overlay(np.uint8(img), hm)).save(out / name)
            written += 1
            if on_written:
                on_written(f, float(prob), verdict(prob, detector.threshold), out / name)
            if len(gallery) < GALLERY_ROWS:
                gallery.append((img, hm, prob, f.name))
    if not written:
        raise UserError(f"none of the {len(files)} images could be read")
    imgs, heats, probs, titles = zip(*gallery)
    path = save_gallery(list(imgs), list(heats), np.array(probs), detector.threshold, out / "gallery.png", titles)
    return Explained(written, batches.skipped, path)


# ----------------------------------------------------------------------------- faces
def explain_faces(detector, picture: np.ndarray, fn: Callable, display: int = 256) -> list[dict]:
    """Each face a face model scores in ``picture`` (decoded by :func:`dfk.data.faces.load_for_faces`, or a
    video frame), cut by the model's rule: ``box``, ``probability_fake``, ``label``, ``input`` and ``heat``
    (what the model saw and its map) and ``overlay`` (the map on the same cut at ``display`` px)."""
    import cv2

    from dfk.data.faces import crop, face_crops
    from dfk.metrics.binary import verdict

    boxes, x = face_crops(picture, detector.faces, detector.image_size)
    if not boxes:
        return []
    heat, raw = gradcam(detector.model, x.astype(np.float32), fn=fn)
    probs = detector.calibrated(raw)
    shown_rule = dataclasses.replace(detector.faces, size=display)
    out = []
    for b, inp, h, p in zip(boxes, x, heat, probs):
        shown = crop(picture, b, shown_rule)
        big = cv2.resize(h, (shown.shape[1], shown.shape[0]), interpolation=cv2.INTER_LINEAR)
        out.append({"box": b, "probability_fake": float(p), "label": verdict(float(p), detector.threshold),
                    "input": inp, "heat": h, "overlay": overlay(shown, big)})
    return out


def _explain_face_files(detector, files, out: Path, fn, on_written, on_skip) -> Explained:
    """:func:`explain_files` for a face model: an overlay per face (``<stem>_face<k>_gradcam.png``)."""
    from PIL import Image

    from dfk.data.decode import BadImage, read_bytes
    from dfk.data.faces import load_for_faces

    used: set[str] = set()
    gallery: list[tuple] = []
    written = skipped = 0
    for f in map(Path, files):
        try:
            faces = explain_faces(detector, load_for_faces(read_bytes(f)), fn)
        except BadImage as exc:
            skipped += 1
            if on_skip:
                on_skip(f, str(exc))
            continue
        if not faces and on_skip:
            on_skip(f, "no face found")
        for k, face in enumerate(faces, 1):
            name, n = f"{f.stem}_face{k}_gradcam.png", 1
            while name in used:
                n += 1
                name = f"{f.stem}_{n}_face{k}_gradcam.png"
            used.add(name)
            Image.fromarray(face["overlay"]).save(out / name)
            written += 1
            if on_written:
                on_written(f, face["probability_fake"], face["label"], out / name)
            if len(gallery) < GALLERY_ROWS:
                gallery.append((face["input"], face["heat"], face["probability_fake"], f"{f.name}, face {k}"))
    if not written:
        raise UserError(f"no face found in the {len(files)} images (a model trained on face crops scores faces only)")
    imgs, heats, probs, titles = zip(*gallery)
    path = save_gallery(np.stack(imgs), np.stack(heats), np.array(probs), detector.threshold, out / "gallery.png", titles)
    return Explained(written, skipped, path)


# ----------------------------------------------------------------------------- faithfulness
from dfk.explain.faithfulness import CENTRE_SIGMA, Faithfulness, score_against_masks  # noqa: E402,F401


def _gallery_picks(ev, n: int) -> list[int]:
    """Up to n test images, round-robin over correct/wrong x fake/real so each kind is shown."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (y, p) in enumerate(zip(ev.y_true, ev.y_pred)):
        groups.setdefault((int(y), int(y == p)), []).append(i)
    order = [groups.get(k, []) for k in ((1, 1), (0, 1), (1, 0), (0, 0))]
    picks: list[int] = []
    while len(picks) < n and any(order):
        for g in order:
            if g and len(picks) < n:
                picks.append(g.pop(0))
    return picks


def log_run_explanations(model, ev, cfg, out_dir: Path, temperature: float = 1.0) -> None:
    """Log a Grad-CAM gallery of test images and faithfulness scores against built-in masks."""
    import cv2
    import mlflow
    from PIL import Image

    from dfk.data.decode import read_bytes, read_image
    from dfk.data.views import decode_views
    from dfk.data.synth import mask_path
    from dfk.models import get_spec

    if get_spec(cfg.arch).native_resolution and not cfg.faces:  # the pictures as the run scored them (decode_views)
        from dfk.models.any_size import any_size_model

        fn = gradient_function(any_size_model(model), default_layer(model))

        def explained(paths):
            views = [decode_views(read_bytes(p), cfg.image_size, True) for p in paths]
            heat, probs = zip(*(gradcam_views(v, fn) for v in views))
            return [v[0].astype(np.float32) for v in views], list(heat), np.array(probs)
    else:
        fn = gradient_function(model)

        def explained(paths):
            images = np.stack([read_image(p, cfg.image_size) for p in paths]).astype(np.float32)
            heat, probs = gradcam(model, images, fn=fn)
            return images, heat, probs
    picks = _gallery_picks(ev, cfg.gradcam_images)
    if picks:
        images, heat, probs = explained([ev.paths[i] for i in picks])
        from dfk.metrics.binary import apply_temperature

        probs = apply_temperature(probs, temperature)  # the threshold lives on the calibrated scale
        titles = [f"true {'fake' if ev.y_true[i] else 'real'}, {Path(ev.paths[i]).name}" for i in picks]
        save_gallery(images, heat, probs, ev.threshold, out_dir / "gradcam_gallery.png", titles)
        mlflow.log_artifact(str(out_dir / "gradcam_gallery.png"), "gradcam")

    fakes = [(p, mask_path(p)) for p, y in zip(ev.paths, ev.y_true) if y == 1]
    fakes = [(p, m) for p, m in fakes if m is not None]
    if not fakes:
        return
    heats, masks = [], []
    for start in range(0, len(fakes), cfg.batch_size):
        chunk = fakes[start:start + cfg.batch_size]
        heat = explained([p for p, _ in chunk])[1]
        # each map at the trained size, as each mask: a native-resolution map covers its picture as scored
        side = (cfg.image_size, cfg.image_size)
        heats.append(np.stack([h if h.shape == side else cv2.resize(np.asarray(h, np.float32), side,
                                                                    interpolation=cv2.INTER_LINEAR) for h in heat]))
        masks += [np.asarray(Image.open(m).convert("L").resize((cfg.image_size, cfg.image_size), Image.NEAREST))
                  for _, m in chunk]
    f = score_against_masks(np.concatenate(heats), np.stack(masks), seed=cfg.seed)
    mlflow.log_metrics(f.metrics())
