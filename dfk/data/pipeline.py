"""The tf.data input pipeline: stream image files from disk, decode in parallel, augment, batch.

Files are decoded by TensorFlow's own JPEG and PNG decoders where those give the same pixels as
:func:`dfk.data.decode.read_image` (within one level of rounding), and by that Pillow decoder
otherwise. The scan's index says, per file, which: :func:`route` reads its format, mode, size and
EXIF orientation. TensorFlow's decoders run on tf.data's threads without Python's GIL, so the input
keeps up with the accelerator and grows with cores; the Pillow decoder (CMYK, 16-bit, palette,
alpha, EXIF rotation, WebP, TIFF, ...) holds the GIL for part of each image. Every safety check
stays: a file goes to TensorFlow only if the scan passed its header and its decoded size is under
:data:`NATIVE_MAX_BYTES`, and only if, when read for training, its size, dimensions and (PNG) bit
depth are still what the scan saw; anything else, and any file TensorFlow fails on, is decoded by
Pillow, which checks it again and records it if bad.

A training set whose decoded pixels fit :data:`CACHE_BYTES` is decoded once and kept in memory;
a larger one streams, holding only file paths and their routes (the shuffle buffer holds paths,
not pixels), so memory never grows past that budget with the dataset. Files that fail to decode
are dropped from the stream and recorded in a :class:`DecodeFailures` list that the training run logs.
"""

from __future__ import annotations

import threading
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from dfk.config import TrainConfig
from dfk.data.decode import BadImage, read_bytes, read_image
from dfk.data.views import NATIVE_MAX_SIDE, decode_native, decode_views, larger_than_input, native_dims, training_view

AUTOTUNE = tf.data.AUTOTUNE
#: Training sets whose decoded pixels (uint8) fit in this many bytes are decoded once and kept in memory.
CACHE_BYTES = 64 * 2**20
#: Decoded bytes above which a file goes to the Pillow decoder, whose decodes share the process's
#: :data:`dfk.data.decode.DECODE_MEMORY`: TensorFlow's decoders run outside it, one per tf.data
#: thread, so each is kept small (8 MiB: a 1600x1600 RGB picture, or at 256 px a 40 Mpx JPEG, which
#: libjpeg decodes at 1/8 of its size as Pillow would).
NATIVE_MAX_BYTES = 8 * 2**20

#: Routes: which decoder a file goes to.
PILLOW, JPEG, PNG = 0, 1, 2
#: libjpeg's reduced-size decoding, as Pillow's ``JpegImageFile.draft`` picks it (largest first).
_JPEG_SCALES = (8, 4, 2, 1)
#: How the decoded picture is brought to size, as :func:`dfk.data.decode.resize` does; for a
#: native-resolution model, as :func:`dfk.data.views.training_view` does: a crop of the picture
#: (``_CROP``), or of the picture shrunk to its cap first (``_CAP``).
_SAME, _AREA, _LINEAR, _CROP, _CAP = 0, 1, 2, 3, 4


def route(info, size: int, native: bool = False) -> tuple[int, int, int, int, int]:
    """``(decoder, JPEG scale, resize, height, width)`` of a file whose header the scan
    read (``info``, a :class:`dfk.data.scan.ImageInfo`, or None), to be brought to ``size`` px
    (``native``: as a native-resolution model's training crop, :func:`dfk.data.views.training_view`).

    TensorFlow decodes (``JPEG``/``PNG``) what it turns into the same pixels as the Pillow decoder:
    8-bit RGB or grayscale JPEG (not CMYK, not MPO) and PNG (not palette, alpha or 16-bit: the bit
    depth is checked from the file, the mode cannot tell), upright (EXIF orientation 1; a PNG's
    EXIF, which may follow its pixels, is looked for in the file), shrunk or grown in both sides
    alike (OpenCV's area interpolation grows differently). Anything else goes to ``PILLOW``.
    """
    if info is None:
        return PILLOW, 0, 0, 0, 0
    w, h = width, height = info.width, info.height
    if info.format == "JPEG" and info.mode in ("RGB", "L") and info.orientation == 1:
        # Pillow's JpegImageFile.draft(mode, (size, size)): the largest scale keeping both sides >= size.
        draft = NATIVE_MAX_SIDE if native else size  # dfk.data.views.decode_native drafts at the cap
        most = min(w // draft, h // draft)
        scale = next(i for i, s in enumerate(_JPEG_SCALES) if most >= s or s == 1)
        s = _JPEG_SCALES[scale]
        decoder, w, h = JPEG, -(-w // s), -(-h // s)
    elif info.format == "PNG" and info.mode in ("RGB", "L") and info.orientation in (0, 1):
        decoder, scale = PNG, len(_JPEG_SCALES) - 1
    else:
        return PILLOW, 0, 0, 0, 0
    if w * h * 3 > NATIVE_MAX_BYTES:
        return PILLOW, 0, 0, 0, 0
    if native and (dims := native_dims(h, w, size)) is not None:
        return decoder, scale, _CROP if dims == (h, w) else _CAP, height, width
    if w == size and h == size:
        how = _SAME
    elif w >= size and h >= size:
        how = _AREA
    elif w <= size and h <= size:
        how = _LINEAR
    else:
        return PILLOW, 0, 0, 0, 0
    return decoder, scale, how, height, width  # the header's dimensions: what the bytes read are checked against


def _target(r: tuple[int, int, int, int, int], size: int) -> tuple[int, int]:
    """The (capped) dimensions a native route's crop is cut from; (0, 0) for any other route."""
    decoder, scale, how, h, w = r
    if how not in (_CROP, _CAP):
        return 0, 0
    s = _JPEG_SCALES[scale] if decoder == JPEG else 1
    return native_dims(-(-h // s), -(-w // s), size)


class DecodeFailures:
    """Thread-safe record of files that failed while streaming (decode runs on tf.data threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, str] = {}

    def add(self, path: str, reason: str) -> None:
        with self._lock:
            self._items[path] = reason

    def items(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._items.items())

    def __len__(self) -> int:
        return len(self._items)


def _decoder(size: int, failures: DecodeFailures, native: bool = False):
    """Pillow's decode of a vector of paths (and, for a native-resolution model, their crops' places
    ``u``): (images uint8 (n, size, size, 3), decoded or not (n,))."""
    blank = np.zeros((size, size, 3), np.uint8)

    def load(paths: np.ndarray, u: np.ndarray):
        images, ok = [], []
        for path, where in zip(paths, u):
            p = path.decode()
            try:
                images.append(training_view(decode_native(read_bytes(p)), size, where) if native else read_image(p, size))
                ok.append(True)
            except BadImage as exc:
                failures.add(p, str(exc))
                images.append(blank)
                ok.append(False)
        return (np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)), np.array(ok, bool)

    return load


def _has(contents: tf.Tensor, marker: bytes) -> tf.Tensor:
    # A byte search: TensorFlow's regular expressions read UTF-8 and miss bytes in binary data.
    return tf.size(tf.strings.split(contents, sep=marker)) > 1


def _unchanged(contents: tf.Tensor, decoder: int, h, w, nbytes) -> tf.Tensor:
    """``contents`` if they are the file the scan passed, else empty bytes, which no decoder takes:
    same length, and a JPEG or PNG header of the same dimensions (a PNG of bit depth 8, grey or RGB,
    complete, with no EXIF or XMP that could turn it). A failing op, here or in a decoder given foreign
    or broken bytes (a truncated JPEG fails TensorFlow's decoder as it fails Pillow's), sends the
    file to Pillow (:func:`_decode_chunks`): so no test here needs to guard the next."""
    same = tf.cast(tf.strings.length(contents), tf.int64) == nbytes
    if decoder == JPEG:
        shape = tf.io.extract_jpeg_shape(contents)  # the header only, never the pixels
        checks = [shape[0] == h, shape[1] == w, tf.logical_or(shape[2] == 1, shape[2] == 3)]
    else:
        dims = tf.io.decode_raw(tf.strings.substr(contents, 16, 8), tf.int32, little_endian=False)
        depth_and_colour = tf.strings.substr(contents, 24, 2)
        checks = [tf.strings.substr(contents, 0, 16) == b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
                  dims[0] == w, dims[1] == h,
                  tf.logical_or(depth_and_colour == b"\x08\x00", depth_and_colour == b"\x08\x02"),
                  tf.strings.substr(contents, tf.maximum(tf.strings.length(contents) - 8, 0), 4) == b"IEND",
                  *[tf.logical_not(_has(contents, m)) for m in (b"eXIf", b"XML:com.adobe.xmp", b"Raw profile type exif")]]
    return tf.where(tf.reduce_all([same, *checks]), contents, b"")


def _native(decoder: int, scale: int, how: int, size: int):
    """TensorFlow's read, check and decode of files of one route: ``(path, h, w, nbytes, th, tw, u)`` ->
    uint8 (size, size, 3); ``th, tw, u``: a native-resolution crop's picture size and place (else unused).
    The route is fixed when the graph is built, so the graph holds no branches (each costs a call)."""
    def decode(path, h, w, nbytes, th, tw, u):
        contents = _unchanged(tf.io.read_file(path), decoder, h, w, nbytes)
        if decoder == JPEG:
            # INTEGER_ACCURATE: libjpeg's default IDCT, which Pillow uses (TensorFlow's own default is the fast one).
            image = tf.io.decode_jpeg(contents, channels=3, ratio=_JPEG_SCALES[scale], dct_method="INTEGER_ACCURATE")
        else:
            image = tf.io.decode_png(contents, channels=3)
        if how in (_CROP, _CAP):
            if how == _CAP:  # shrunk to the cap with both sides alike: area, as OpenCV's INTER_AREA
                image = tf.image.resize(image, tf.stack([th, tw]), method="area")
                image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
            # dfk.data.views.crop_offset, in the same float32 arithmetic
            top = [tf.minimum(tf.cast(tf.floor(u[i] * tf.cast(n - size + 1, tf.float32)), tf.int32), n - size)
                   for i, n in enumerate((th, tw))]
            image = image[top[0]:top[0] + size, top[1]:top[1] + size]
        elif how != _SAME:
            image = tf.image.resize(image, (size, size), method="area" if how == _AREA else "bilinear")
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        image.set_shape((size, size, 3))
        return image

    return decode


def _not_native(path, h, w, nbytes, th, tw, u):
    """The branch of files routed to Pillow: fails, so the chunk leaves them to Pillow."""
    with tf.control_dependencies([tf.debugging.Assert(False, ["routed to Pillow"])]):
        return tf.zeros((0, 0, 3), tf.uint8)


#: Files a training set kept in memory decodes in one tf.data call (a streamed one: one batch): enough
#: to spread the cost of setting a chunk up (~0.3 ms); 6 MiB of 256 px images.
CHUNK = 64


_PLAIN = tf.data.Options()
_PLAIN.experimental_optimization.apply_default_optimizations = False
_PLAIN.autotune.enabled = False


def _decode_chunks(ds: tf.data.Dataset, size: int, failures: DecodeFailures, deterministic: bool,
                   routes: Sequence[tuple[int, int, int]], all_native: bool, native: bool = False) -> tf.data.Dataset:
    """Chunks of ``(path, label, branch, h, w, nbytes, th, tw, u)`` -> ``(images uint8, labels, paths)`` of the
    files that decoded, in order (the others are recorded in ``failures``). ``branch`` 0 is Pillow,
    ``k`` the route ``routes[k - 1]`` (decoder, JPEG scale, resize); ``all_native``: no branch 0.

    TensorFlow decodes, one after the other, the files its route and their bytes allow; any file
    it did not decode (routed to Pillow, changed since the scan, or broken past its header so that
    TensorFlow's decoder failed) is then decoded by Pillow, which records why a bad one is bad. (A
    failing tf.data op cannot be caught inside a graph: ``ignore_errors`` on the chunk's own little
    dataset drops the file, and the chunk finds it missing.)
    """
    load = _decoder(size, failures, native)
    branches = [_not_native, *(_native(*r, size) for r in routes)]
    nothing = (tf.zeros([0], tf.int32), tf.zeros([0, size, size, 3], tf.uint8))

    def native_only(i, path, branch, *rest):
        if all_native and len(routes) == 1:  # the usual folder of one kind of file: no branch at all
            return i, branches[1](path, *rest)
        image = tf.switch_case(branch, [lambda f=f: f(path, *rest) for f in branches])
        image.set_shape((size, size, 3))
        return i, image

    def decode_chunk(paths, labels, branch, h, w, nbytes, th, tw, u):
        n = tf.shape(paths)[0]
        got, native_images = nothing
        if routes:
            got, native_images = (
                tf.data.Dataset.from_tensor_slices((tf.range(n), paths, branch, h, w, nbytes, th, tw, u))
                .map(native_only).ignore_errors().batch(tf.cast(n, tf.int64))
                .concatenate(tf.data.Dataset.from_tensors(nothing)).take(1)
                .with_options(_PLAIN).get_single_element())

        def with_pillow():
            rest = tf.cast(tf.where(tf.math.unsorted_segment_max(tf.ones_like(got), got, n) <= 0)[:, 0], tf.int32)
            images, ok = tf.numpy_function(load, [tf.gather(paths, rest), tf.gather(u, rest)], [tf.uint8, tf.bool],
                                           stateful=False)
            at = tf.concat([got, rest], 0)[:, None]
            images = tf.scatter_nd(at, tf.concat([native_images, tf.reshape(images, [-1, size, size, 3])], 0),
                                   [n, size, size, 3])
            ok = tf.scatter_nd(at, tf.concat([tf.ones_like(got, tf.bool), tf.reshape(ok, [-1])], 0), [n])
            return tf.boolean_mask(images, ok), tf.boolean_mask(labels, ok), tf.boolean_mask(paths, ok)

        return tf.cond(tf.shape(got)[0] == n, lambda: (native_images, labels, paths), with_pillow)

    return ds.map(decode_chunk, num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def _gaussian_blur(image: tf.Tensor, max_sigma: float, seed: int | None) -> tf.Tensor:
    """Blur with a random sigma in [0, max_sigma] (separable depthwise convolution)."""
    radius = max(1, int(np.ceil(3 * max_sigma)))
    sigma = tf.random.uniform([], 0.0, max_sigma, seed=seed)
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-(x**2) / (2 * tf.maximum(sigma, 1e-3) ** 2))
    k = k / tf.reduce_sum(k)
    kx = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, 3, 1])
    ky = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, 3, 1])
    out = tf.nn.depthwise_conv2d(image[None], kx, [1, 1, 1, 1], "SAME")
    out = tf.nn.depthwise_conv2d(out, ky, [1, 1, 1, 1], "SAME")[0]
    return out


def _mirror_some(images: tf.Tensor, seed: int | None) -> tf.Tensor:
    """Each image of a batch ``(n, h, w, c)`` mirrored left-right with probability 1/2. Only the
    chosen half is reversed, as rows of an ``(k*h, w, c)`` view (TensorFlow's fast path for image
    rows); ``random_flip_left_right`` on a batch reverses every image and selects pixel by pixel."""
    n = tf.shape(images)[0]
    pick = tf.cast(tf.random.uniform([n], seed=seed) < 0.5, tf.int32)
    kept, chosen = tf.dynamic_partition(images, pick, 2)
    shape = tf.shape(chosen)
    mirrored = tf.reshape(tf.reverse(tf.reshape(chosen, tf.stack([-1, shape[2], shape[3]])), [1]), shape)
    return tf.dynamic_stitch(tf.dynamic_partition(tf.range(n), pick, 2), [kept, mirrored])


def augmenter(cfg: TrainConfig):
    """Training augmentation of a batch of uint8 images ``(n, h, w, 3)`` into float32 0..255, each
    image drawn its own, or None when none is asked for. It runs on whole batches: a per-image ``map``
    between an ``unbatch`` and a ``batch`` costs a tf.data step per image, as much as a tenth of
    decoding one."""
    augs = cfg.augmentations
    if not augs:
        return None
    import keras

    geometric = []
    if "rotation" in augs and cfg.aug_rotation > 0:
        geometric.append(keras.layers.RandomRotation(cfg.aug_rotation, fill_mode="reflect", seed=cfg.seed))
    if "zoom" in augs and cfg.aug_zoom > 0:
        geometric.append(keras.layers.RandomZoom(cfg.aug_zoom, fill_mode="reflect", seed=cfg.seed))
    seed = cfg.seed

    def each(f):  # an augmentation TensorFlow draws once per call: drawn per image
        return lambda images: tf.map_fn(f, images, fn_output_signature=tf.float32)

    def augment(images: tf.Tensor) -> tf.Tensor:
        if "flip" in augs:  # moves pixels: on the uint8 batch, a quarter of the bytes
            images = _mirror_some(images, seed)
        images = tf.cast(images, tf.float32)
        for layer in geometric:
            images = layer(images, training=True)
        if "brightness" in augs and cfg.aug_brightness > 0:
            shift = tf.random.uniform(tf.stack([tf.shape(images)[0], 1, 1, 1]), -cfg.aug_brightness,
                                      cfg.aug_brightness, seed=seed)
            images = images + shift * 255.0
        if "blur" in augs and cfg.aug_blur_sigma > 0:
            images = each(lambda image: _gaussian_blur(image, cfg.aug_blur_sigma, seed))(images)
        if set(augs) - {"flip"}:  # a flip alone moves pixels, never changes them: no pass over the image
            images = tf.clip_by_value(images, 0.0, 255.0)
        if "jpeg" in augs and cfg.aug_jpeg_quality < 100:
            images = each(lambda image: tf.image.random_jpeg_quality(image / 255.0, cfg.aug_jpeg_quality, 100,
                                                                     seed=seed) * 255.0)(images)
        return images

    return augment


def make_dataset(
    paths: Sequence[str],
    labels: Sequence[int],
    image_size: int,
    batch_size: int,
    failures: DecodeFailures,
    training: bool = False,
    cfg: TrainConfig | None = None,
    with_paths: bool = False,
    seed: int = 0,
    info: Mapping[str, object] | None = None,
    native: bool = False,
) -> tf.data.Dataset:
    """Batches of ``(images float32 0..255, labels float32)``, plus paths when ``with_paths``.

    ``native``: for a native-resolution model (``ModelSpec.native_resolution``) a picture larger than
    ``image_size`` is not resized but cropped at its own resolution (:func:`dfk.data.views.training_view`):
    a random crop, a new one every epoch, in a training stream; the centre crop in an evaluation stream
    (the validation during fit; a run's scores come from :func:`scoring_dataset`).

    Training streams are shuffled every epoch and augmented as ``cfg`` says; evaluation streams
    keep file order so results line up with paths. ``info``: what the scan read of each file's
    header (:attr:`dfk.data.scan.DatasetIndex.info`); files it describes are decoded by TensorFlow
    where :func:`route` allows, the others (all, without it) by the Pillow decoder.
    """
    # No picture larger than the input (the built-in set at its own size): exactly the resizing stream.
    native = native and larger_than_input(paths, info, image_size)
    planned = [route(info.get(p) if info is not None else None, image_size, native) for p in paths]
    routes = sorted({r[:3] for r in planned if r[0] != PILLOW})
    branch = np.array([routes.index(r[:3]) + 1 if r[0] != PILLOW else 0 for r in planned], np.int32)
    dims = np.array([r[3:] for r in planned], np.int32).reshape(-1, 2)
    target = np.array([_target(r, image_size) for r in planned], np.int32).reshape(-1, 2)
    nbytes = np.array([info[p].file_bytes if info is not None and p in info else 0 for p in paths], np.int64)
    centre = np.full((len(paths), 2), 0.5, np.float32)  # where a crop is cut: the centre (unused by a resize)
    ds = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.float32), branch, *dims.T, nbytes,
                                             *target.T, centre))
    # A set whose decoded pixels fit the budget is decoded once and kept (every later epoch skips
    # the decoder, which competes with training for the CPU); a larger one streams from disk. A
    # native-resolution model's crops change every epoch: its files are decoded every epoch.
    in_memory = training and not native and len(paths) * image_size * image_size * 3 <= CACHE_BYTES
    if training and not in_memory:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if native and training:  # where each crop is cut: fractions (y, x) in [0, 1), drawn anew every epoch
        where = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2).map(
            lambda r: tf.cast(r % 2**24, tf.float32) / 2**24)
        ds = tf.data.Dataset.zip(ds, where).map(lambda t, u: (*t[:-1], u))
    aug = augmenter(cfg) if (training and cfg is not None) else None
    # Decoded a chunk of files at a time: a streamed set's chunks are its batches (each tf.data step
    # per image, a call or a copy, costs about a tenth of decoding a 256 px JPEG).
    ds = _decode_chunks(ds.batch(CHUNK if in_memory else batch_size), image_size, failures,
                        deterministic=not training, routes=routes, all_native=not (branch == 0).any(), native=native)
    if in_memory:  # kept as uint8, shuffled after the cache so every epoch gets a new order
        ds = ds.unbatch().cache().shuffle(len(paths), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    else:  # a batch whose every file failed
        ds = ds.filter(lambda images, labels, paths: tf.shape(images)[0] > 0)

    def to_model(images, labels, paths):
        images = aug(images) if aug is not None else tf.cast(images, tf.float32)
        return (images, labels, paths) if with_paths else (images, labels)

    return ds.map(to_model, num_parallel_calls=AUTOTUNE, deterministic=not training).prefetch(AUTOTUNE)


# ----------------------------------------------------------------------------- scoring at native resolution
def scoring_dataset(paths: Sequence[str], labels: Sequence[int], image_size: int, failures: DecodeFailures,
                    native: bool = True) -> tf.data.Dataset:
    """One element per readable file, in order: ``(views float32 (k, H, W, 3), [label], [path])``, the
    file brought to the model by :func:`dfk.data.views.decode_views` as every scoring entry point brings
    it; the picture's probability is the mean over its views. For a native-resolution model's run scores
    (sizes differ, so one file at a time); unreadable files are recorded in ``failures`` and left out."""
    def files():
        for p, y in zip(paths, labels):
            try:
                x = decode_views(read_bytes(p), image_size, native)
            except BadImage as exc:
                failures.add(p, str(exc))
                continue
            yield x.astype(np.float32), np.array([y], np.float32), np.array([p])

    return tf.data.Dataset.from_generator(files, output_signature=(
        tf.TensorSpec((None, None, None, 3), tf.float32), tf.TensorSpec((1,), tf.float32),
        tf.TensorSpec((1,), tf.string))).prefetch(2)

