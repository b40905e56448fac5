"""Input-pipeline efficiency: training images/s fed from JPEG files vs from in-memory tensors.

For `cnn` and `resnet` at 128 and 256 px, one process measures, side by side:
  files   dfk's tf.data pipeline (decode from disk, parallel map, prefetch)
  memory  the same decoded images held as tensors (the ceiling a pipeline can reach)
  keras   keras.utils.image_dataset_from_directory on the same folder
and reports files/memory (goal >= 0.95) and keras/memory. A second part runs one training
epoch over a folder and over one 10x larger in separate processes and compares their peak RSS
(goal <= 1.1: memory does not grow with the dataset).

The pipeline-only part (``--parts decode``) times the input streams alone, no model, on 6,000
JPEGs of 256 px, with tf.data given 1 and then 2 threads (``threading.private_threadpool_size``;
one thread per op): dfk's stream (TensorFlow decodes what the scan routes to it, Pillow the rest),
the same with Pillow decoding everything (dfk before native decoding), and TensorFlow's own
pipeline as its tutorials write it (``read_file`` + ``decode_jpeg`` + ``resize``); each as an
evaluation stream (decode, batch) and as a training stream (shuffle, flip, batch). The feeds take
turns, ``--rounds`` times, and each figure is the median (other work on a shared machine moves
single passes by 2x). Goal: dfk >= 0.9x TensorFlow's own, and faster with 2 threads than with 1.

    .venv/bin/python -m bench.pipeline            # writes the pipeline section of docs/BENCHMARKS.md
    .venv/bin/python -m bench.pipeline --parts decode --rounds 5
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _train_rate(model, ds, steps: int, batch: int) -> float:
    model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)  # build, trace and fill the pipeline
    t = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch / (time.perf_counter() - t)


def throughput(arch: str, size: int, root: Path, steps: int, batch: int = 32) -> dict:
    import numpy as np
    import keras
    import tensorflow as tf

    from dfk.config import TrainConfig
    from dfk.data.decode import read_image
    from dfk.data.pipeline import DecodeFailures, make_dataset
    from dfk.data.scan import scan
    from dfk.models import create_model
    from dfk.training.trainer import compile_model

    index = scan(root)
    paths, labels = index.paths("train"), index.labels("train")
    cfg = TrainConfig(arch=arch, image_size=size, batch_size=batch)
    files = make_dataset(paths, labels, size, batch, DecodeFailures(), training=True, cfg=cfg, info=index.info).repeat()
    X = np.stack([read_image(p, size) for p in paths]).astype("float32")
    memory = (tf.data.Dataset.from_tensor_slices((X, np.asarray(labels, "float32")))
              .shuffle(len(X)).map(lambda x, y: (tf.image.random_flip_left_right(x), y)).batch(batch).repeat()
              .prefetch(tf.data.AUTOTUNE))
    kds = keras.utils.image_dataset_from_directory(
        root / "Train", image_size=(size, size), batch_size=batch, label_mode="binary", verbose=False,
    ).map(lambda x, y: (tf.image.random_flip_left_right(x), y)).repeat().prefetch(tf.data.AUTOTUNE)
    out = {}
    feeds = {"memory": memory, "files": files, "keras": kds}
    for name in os.environ.get("DFK_BENCH_ORDER", "memory,files,keras").split(","):
        ds = feeds[name]
        keras.utils.set_random_seed(0)
        model, _ = create_model(arch, size, weights="none")
        compile_model(model, 1e-4)
        out[name] = _train_rate(model, ds, steps, batch)
    return out


def _tf_reference(paths, size: int, batch: int, training: bool):
    """TensorFlow's own input pipeline, as its tutorials write it (no checks, no fallback)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(list(paths))
    if training:
        ds = ds.shuffle(len(paths), reshuffle_each_iteration=True)

    def load(path):
        image = tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(path), channels=3), (size, size))
        return tf.image.random_flip_left_right(image) if training else image

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(tf.data.AUTOTUNE)


def _with_threads(ds, threads: int):
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def _one_pass(ds) -> tuple[float, float]:
    """(images/s, CPU-µs of this process per image) over one pass of ``ds``."""
    n, t, cpu = 0, time.perf_counter(), time.process_time()
    for batch in ds:
        n += int(batch[0].shape[0] if isinstance(batch, tuple) else batch.shape[0])
    return n / (time.perf_counter() - t), (time.process_time() - cpu) / n * 1e6


def pipeline_only(root: Path, size: int, rounds: int, threads=(1, 2), batch: int = 32) -> dict:
    """Median images/s (and CPU-µs per image) of each feed, mode and thread count; see the module doc."""
    import statistics

    from dfk.config import TrainConfig
    from dfk.data.pipeline import PILLOW, DecodeFailures, make_dataset, route
    from dfk.data.scan import scan

    index = scan(root)
    paths = [p for split in ("train", "validation", "test") for p in index.paths(split)]
    labels = [y for split in ("train", "validation", "test") for y in index.labels(split)]
    cfg = TrainConfig(image_size=size, batch_size=batch)  # augment: flip, the default

    def feed(name: str, training: bool):
        if name == "native":
            return _tf_reference(paths, size, batch, training)
        return make_dataset(paths, labels, size, batch, DecodeFailures(), training=training,
                            cfg=cfg if training else None, info=index.info if name == "dfk" else None)

    runs: dict[str, list] = {}
    for r in range(rounds):
        for t in threads:
            for mode, training in (("decode", False), ("train", True)):
                for name in ("native", "dfk", "pillow"):
                    rate, cpu = _one_pass(_with_threads(feed(name, training), t))
                    runs.setdefault(f"{name}/{mode}/{t}", []).append((rate, cpu))
        print(f"round {r + 1}/{rounds}:", {k: round(v[-1][0]) for k, v in runs.items()}, flush=True)
    native = sum(route(index.info[p], size)[0] != PILLOW for p in paths)
    return {"images": len(paths), "size": size, "rounds": rounds, "routed_to_tensorflow": native,
            "runs": runs, "median": {k: [statistics.median(a for a, _ in v), statistics.median(c for _, c in v)]
                                     for k, v in runs.items()}}


def peak_rss_child(root: str, size: int) -> None:
    """Run in a subprocess: one cnn training epoch over ``root``; print peak RSS in MiB."""
    from dfk.config import TrainConfig
    from dfk.data.pipeline import DecodeFailures, make_dataset
    from dfk.data.scan import scan
    from dfk.models import create_model
    from dfk.training.trainer import compile_model

    index = scan(root)
    cfg = TrainConfig(image_size=size, batch_size=32)
    ds = make_dataset(index.paths("train"), index.labels("train"), size, 32, DecodeFailures(), training=True, cfg=cfg,
                      info=index.info)
    model, _ = create_model("cnn", size, weights="none")
    compile_model(model, 1e-4)
    model.fit(ds, epochs=1, verbose=0)
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec from the parent.
    hwm_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmHWM:"))
    print(json.dumps({"images": len(index.paths("train")), "peak_rss_mib": hwm_kb / 1024}))


def _replicate(src: Path, dst: Path, times: int) -> Path:
    """A folder with every training image ``times`` times (hard links: no extra disk)."""
    for split in ("Train", "Validation", "Test"):
        for cls in ("Fake", "Real"):
            (dst / split / cls).mkdir(parents=True)
            for f in (src / split / cls).iterdir():
                for k in range(times if split == "Train" else 1):
                    os.link(f, dst / split / cls / f"{k}_{f.name}")
    return dst


RESULTS = Path(__file__).resolve().parent / "results" / "pipeline.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per measurement")
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--archs", default="cnn,resnet")
    parser.add_argument("--parts", default="throughput,rss,decode", help="what to measure now; the rest is kept "
                        "from bench/results/pipeline.json")
    parser.add_argument("--rounds", type=int, default=3, help="turns each feed takes in the pipeline-only part")
    parser.add_argument("--files", type=int, default=6000, help="256 px JPEGs of the pipeline-only part")
    args = parser.parse_args()
    parts = args.parts.split(",")

    from bench.report import write_section
    from dfk.data.synth import SynthSpec, generate

    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"throughput": {}, "rss": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "throughput" in parts:
            for size in (int(s) for s in args.sizes.split(",")):
                root = generate(SynthSpec(train=64, validation=2, test=2, image_size=size), tmp / f"d{size}")
                for arch in args.archs.split(","):
                    r = throughput(arch, size, root, args.steps)
                    results["throughput"][f"{arch}@{size}"] = {**r, "steps": args.steps}
                    print(arch, size, {k: round(v, 2) for k, v in r.items()}, flush=True)
        if "rss" in parts:
            one = generate(SynthSpec(train=150, validation=2, test=2, image_size=128), tmp / "one")
            ten = _replicate(one, tmp / "ten", 10)
            for name, root in (("1x", one), ("10x", ten)):
                out = subprocess.run([sys.executable, "-m", "bench.pipeline_rss", str(root), "128"],
                                     capture_output=True, text=True, check=True,
                                     cwd=Path(__file__).resolve().parents[1])
                results["rss"][name] = json.loads(out.stdout.strip().splitlines()[-1])
                print(name, results["rss"][name], flush=True)
        if "decode" in parts:
            from bench.kaggle_scale import generate_pool, write_kaggle

            pool, rate = generate_pool(tmp / "pool", 500, 256)
            write_kaggle(tmp / "decode", args.files, pool)
            results["decode"] = pipeline_only(tmp / "decode", 256, args.rounds)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))

    lines = [
        "## Input pipeline (`python -m bench.pipeline`)",
        "",
        "Training images/s over the timed steps (batch 32, after one warm-up step), random flips in every feed, "
        "`weights=none`; the three feeds of a row are measured one after the other in one process.",
        "",
        "| model | px | timed steps | in-memory tensors | dfk files pipeline | image_dataset_from_directory "
        "| files / memory (goal >= 0.95) | keras / memory |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, r in sorted(results["throughput"].items(), key=lambda kv: (int(kv[0].split("@")[1]), kv[0])):
        arch, size = key.split("@")
        lines.append(f"| {arch} | {size} | {r['steps']} | {r['memory']:.2f} | {r['files']:.2f} | {r['keras']:.2f} | "
                     f"{r['files'] / r['memory']:.2f} | {r['keras'] / r['memory']:.2f} |")
    rss = results["rss"]
    if rss:
        ratio = rss["10x"]["peak_rss_mib"] / rss["1x"]["peak_rss_mib"]
        lines += [
            "",
            f"Peak RSS (VmHWM) of one `cnn` training epoch at 128 px in a fresh process: {rss['1x']['images']} images "
            f"{rss['1x']['peak_rss_mib']:.0f} MiB, {rss['10x']['images']} images {rss['10x']['peak_rss_mib']:.0f} MiB; "
            f"ratio **{ratio:.2f}** (goal <= 1.1).",
        ]
    if results.get("decode"):
        lines += ["", *_decode_lines(results["decode"])]
    write_section("pipeline", "\n".join(lines))


def _decode_lines(d: dict) -> list[str]:
    m = d["median"]
    lines = [
        f"Input streams alone, no model (`--parts decode`): {d['images']:,} JPEGs of {d['size']} px (500 generated "
        f"images re-encoded at JPEG quality 70-95), batch 32; median of {d['rounds']} turns of images/s, CPU-µs of the "
        f"process per image in brackets. *TensorFlow*: `read_file` + `decode_jpeg` + `resize`, as its tutorials write "
        f"it. *dfk*: `make_dataset` with the scan's index ({d['routed_to_tensorflow']:,} of {d['images']:,} files "
        f"routed to TensorFlow's decoder). *dfk, Pillow only*: without the index, every file decoded by Pillow (dfk "
        f"before this change). *evaluation*: decode, batch; *training*: shuffle, random flip, batch.",
        "",
        "| stream | tf.data threads | TensorFlow | dfk | dfk, Pillow only | dfk / TensorFlow (goal >= 0.9) "
        "| Pillow only / TensorFlow |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    threads = sorted({int(k.split("/")[2]) for k in m})
    for mode, label in (("decode", "evaluation"), ("train", "training")):
        for t in threads:
            n, f, p = (m[f"{name}/{mode}/{t}"] for name in ("native", "dfk", "pillow"))
            lines.append(f"| {label} | {t} | {n[0]:,.0f} ({n[1]:.0f}) | {f[0]:,.0f} ({f[1]:.0f}) | {p[0]:,.0f} ({p[1]:.0f}) | "
                         f"**{f[0] / n[0]:.2f}** | {p[0] / n[0]:.2f} |")
    if len(threads) > 1:
        lo, hi = threads[0], threads[-1]
        lines += ["", f"From {lo} to {hi} threads: " + "; ".join(
            ", ".join(f"{name} {m[f'{name}/{mode}/{hi}'][0] / m[f'{name}/{mode}/{lo}'][0]:.2f}x"
                      for name in ("native", "dfk", "pillow")) + f" ({label} stream)"
            for mode, label in (("decode", "evaluation"), ("train", "training"))) + "."]
    return lines


if __name__ == "__main__":
    main()
