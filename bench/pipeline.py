"""Input-pipeline efficiency: training images/s fed from JPEG files vs from in-memory tensors.

For `cnn` and `resnet` at 128 and 256 px, one process measures, side by side:
  files   dfk's tf.data pipeline (decode from disk, parallel map, prefetch)
  memory  the same decoded images held as tensors (the ceiling a pipeline can reach)
  keras   keras.utils.image_dataset_from_directory on the same folder
and reports files/memory (goal >= 0.95) and keras/memory. A second part runs one training
epoch over a folder and over one 10x larger in separate processes and compares their peak RSS
(goal <= 1.1: memory does not grow with the dataset).

    .venv/bin/python -m bench.pipeline            # writes the pipeline section of docs/BENCHMARKS.md
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
    from dfk.training import compile_model

    index = scan(root)
    paths, labels = index.paths("train"), index.labels("train")
    cfg = TrainConfig(arch=arch, image_size=size, batch_size=batch)
    files = make_dataset(paths, labels, size, batch, DecodeFailures(), training=True, cfg=cfg).repeat()
    X = np.stack([read_image(p, size) for p in paths]).astype("float32")
    memory = (tf.data.Dataset.from_tensor_slices((X, np.asarray(labels, "float32")))
              .shuffle(len(X)).map(lambda x, y: (tf.image.random_flip_left_right(x), y)).batch(batch).repeat()
              .prefetch(tf.data.AUTOTUNE))
    kds = keras.utils.image_dataset_from_directory(
        root / "Train", image_size=(size, size), batch_size=batch, label_mode="binary", verbose=False,
    ).map(lambda x, y: (tf.image.random_flip_left_right(x), y)).repeat().prefetch(tf.data.AUTOTUNE)
    out = {}
    for name, ds in (("memory", memory), ("files", files), ("keras", kds)):
        keras.utils.set_random_seed(0)
        model, _ = create_model(arch, size, weights="none")
        compile_model(model, 1e-4)
        out[name] = _train_rate(model, ds, steps, batch)
    return out


def peak_rss_child(root: str, size: int) -> None:
    """Run in a subprocess: one cnn training epoch over ``root``; print peak RSS in MiB."""
    from dfk.config import TrainConfig
    from dfk.data.pipeline import DecodeFailures, make_dataset
    from dfk.data.scan import scan
    from dfk.models import create_model
    from dfk.training import compile_model

    index = scan(root)
    cfg = TrainConfig(image_size=size, batch_size=32)
    ds = make_dataset(index.paths("train"), index.labels("train"), size, 32, DecodeFailures(), training=True, cfg=cfg)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per measurement")
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--archs", default="cnn,resnet")
    args = parser.parse_args()

    from bench.report import write_section
    from dfk.data.synth import SynthSpec, generate

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in (int(s) for s in args.sizes.split(",")):
            root = generate(SynthSpec(train=64, validation=2, test=2, image_size=size), tmp / f"d{size}")
            for arch in args.archs.split(","):
                r = throughput(arch, size, root, args.steps)
                rows.append((arch, size, r))
                print(arch, size, {k: round(v, 2) for k, v in r.items()}, flush=True)
        one = generate(SynthSpec(train=150, validation=2, test=2, image_size=128), tmp / "one")
        ten = _replicate(one, tmp / "ten", 10)
        rss = {}
        for name, root in (("1x", one), ("10x", ten)):
            out = subprocess.run([sys.executable, "-m", "bench.pipeline_rss", str(root), "128"],
                                 capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
            rss[name] = json.loads(out.stdout.strip().splitlines()[-1])
            print(name, rss[name], flush=True)

    lines = [
        "## Input pipeline (`python -m bench.pipeline`)",
        "",
        f"Training images/s, {args.steps} timed steps of batch 32 after one warm-up step, random flips in every feed, "
        "`weights=none`.",
        "",
        "| model | px | in-memory tensors | dfk files pipeline | image_dataset_from_directory | files / memory (goal >= 0.95) | keras / memory |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arch, size, r in rows:
        lines.append(f"| {arch} | {size} | {r['memory']:.1f} | {r['files']:.1f} | {r['keras']:.1f} | "
                     f"{r['files'] / r['memory']:.2f} | {r['keras'] / r['memory']:.2f} |")
    ratio = rss["10x"]["peak_rss_mib"] / rss["1x"]["peak_rss_mib"]
    lines += [
        "",
        f"Peak RSS of one `cnn` training epoch at 128 px: {rss['1x']['images']} images "
        f"{rss['1x']['peak_rss_mib']:.0f} MiB, {rss['10x']['images']} images {rss['10x']['peak_rss_mib']:.0f} MiB; "
        f"ratio **{ratio:.2f}** (goal <= 1.1).",
    ]
    write_section("pipeline", "\n".join(lines))


if __name__ == "__main__":
    main()
