"""Does dfk's input keep a GPU busy? ResNet50 and srm at 256 px, mixed precision, on one GPU.

For each architecture: training images/s over ``--steps`` steps (after a warm-up), the GPU's
utilisation sampled by ``nvidia-smi`` every 200 ms during those steps, and the time each step
waited for its batch (the host blocked in ``next()`` on dfk's tf.data stream; near zero when the
input outruns the GPU). The stream is dfk's (`make_dataset` with the scan's index: TensorFlow
decodes the JPEGs, Pillow the odd files) over a Kaggle-shaped folder of 256 px JPEGs, flips on,
as training streams it; the input alone (no model) is timed too, so "input-bound" is visible as
input images/s close to training images/s.

Not run on the machine that wrote docs/BENCHMARKS.md (no GPU there). On a GPU machine:

    pip install -e '.[gpu,dev]'                       # TensorFlow's CUDA build
    python -m bench.gpu_check                         # prints a table; --write adds it to docs/BENCHMARKS.md
    python -m bench.gpu_check --data /data/deepfake   # a folder of your own (Kaggle layout) instead

``--allow-cpu`` runs it without a GPU (a smoke test of the script; the figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.json"


class GpuSampler:
    """``nvidia-smi`` utilisation and memory samples while the block runs (empty without nvidia-smi)."""

    def __init__(self, period_ms: int = 200) -> None:
        self.period_ms, self.samples, self._proc = period_ms, [], None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 f"-lms={self.period_ms}", "-i", "0"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                util, mem = (float(v) for v in line.split(","))
                self.samples.append((util, mem))
            except ValueError:
                pass

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_util_mean": None, "gpu_util_median": None, "gpu_mem_max_mib": None, "samples": 0}
        util = [u for u, _ in self.samples]
        return {"gpu_util_mean": statistics.fmean(util), "gpu_util_median": statistics.median(util),
                "gpu_mem_max_mib": max(m for _, m in self.samples), "samples": len(util)}


def input_rate(ds, steps: int, batch: int) -> float:
    """Images/s of the stream alone, no model."""
    it = iter(ds)
    next(it)
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * batch / (time.perf_counter() - t)


def train_rate(arch: str, size: int, ds, steps: int, warmup: int, batch: int) -> dict:
    """Training images/s, the GPU's utilisation and the wait for input per step (a step = next() + train_on_batch)."""
    import keras

    from dfk.models import create_model
    from dfk.training.devices import precision
    from dfk.training.trainer import compile_model

    with precision("on"):
        model, _ = create_model(arch, size, weights="none")
    compile_model(model, 1e-4)
    it = iter(ds)
    for _ in range(warmup):  # trace, compile, autotune, fill the prefetch buffer
        x, y = next(it)
        model.train_on_batch(x, y)
    waits, steps_s = [], []
    with GpuSampler() as gpu:
        t0 = time.perf_counter()
        for _ in range(steps):
            a = time.perf_counter()
            x, y = next(it)
            b = time.perf_counter()
            model.train_on_batch(x, y)  # returns host values: the step has finished on the device
            steps_s.append(time.perf_counter() - a)
            waits.append(b - a)
        seconds = time.perf_counter() - t0
    keras.backend.clear_session()
    return {"images_per_s": steps * batch / seconds, "step_ms_median": 1000 * statistics.median(steps_s),
            "input_wait_ms_median": 1000 * statistics.median(waits), "input_wait_ms_p90": 1000 * sorted(waits)[int(0.9 * len(waits))],
            "input_wait_share": sum(waits) / seconds, **gpu.summary()}


def report(r: dict) -> str:
    lines = [
        f"## One GPU: {' and '.join(r['models'])} at {r['size']} px, mixed precision (`python -m bench.gpu_check`)",
        "",
        f"{r['device']}; dfk's training stream over {r['images']:,} JPEGs of {r['size']} px (flips), batch {r['batch']}, "
        f"{r['steps']} timed steps after {r['warmup']}; input alone: {r['input_images_per_s']:,.0f} images/s.",
        "",
        "| model | training images/s | step (ms, median) | waiting for input per step (ms, median / p90) | "
        "share of time waiting | GPU utilisation (mean / median %) | GPU memory (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arch, m in r["models"].items():
        util = "n/a" if m["gpu_util_mean"] is None else f"{m['gpu_util_mean']:.0f} / {m['gpu_util_median']:.0f}"
        mem = "n/a" if m["gpu_mem_max_mib"] is None else f"{m['gpu_mem_max_mib']:,.0f}"
        lines.append(f"| {arch} | {m['images_per_s']:,.0f} | {m['step_ms_median']:.1f} | {m['input_wait_ms_median']:.2f} / "
                     f"{m['input_wait_ms_p90']:.2f} | {100 * m['input_wait_share']:.1f}% | {util} | {mem} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a Kaggle-layout folder (default: one written under /tmp, --files JPEGs)")
    parser.add_argument("--files", type=int, default=6000)
    parser.add_argument("--archs", default="resnet,srm")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (a smoke test)")
    parser.add_argument("--write", action="store_true", help="add the table to docs/BENCHMARKS.md (section gpu-check)")
    args = parser.parse_args()

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not args.allow_cpu:
        raise SystemExit("no GPU visible to TensorFlow (pip install -e '.[gpu]'; nvidia-smi works?); "
                         "--allow-cpu runs it anyway as a smoke test")
    for g in gpus:
        tf.config.experimental.set_memory_growth(g, True)  # so nvidia-smi's memory is what the model uses

    from dfk.config import TrainConfig
    from dfk.data.pipeline import DecodeFailures, make_dataset
    from dfk.data.scan import open_data
    from dfk.training.devices import nvidia_gpus

    work = Path(tempfile.mkdtemp(prefix="dfk-gpu-", dir="/tmp"))
    try:
        root = Path(args.data) if args.data else None
        if root is None:
            from bench.kaggle_scale import generate_pool, write_kaggle

            pool, _ = generate_pool(work / "pool", 500, args.size)
            root = work / "kaggle"
            write_kaggle(root, args.files, pool, threads=os.cpu_count() or 2)
        index = open_data(root)
        paths, labels = index.paths("train"), index.labels("train")
        cfg = TrainConfig(image_size=args.size, batch_size=args.batch)
        ds = make_dataset(paths, labels, args.size, args.batch, DecodeFailures(), training=True, cfg=cfg,
                          info=index.info).repeat()
        r = {"device": ", ".join(nvidia_gpus()) or ("no GPU (--allow-cpu)" if not gpus else "GPU"),
             "images": len(paths), "size": args.size, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
             "input_images_per_s": input_rate(ds, args.steps, args.batch), "models": {}}
        print(f"input alone: {r['input_images_per_s']:,.0f} images/s", flush=True)
        for arch in args.archs.split(","):
            r["models"][arch] = train_rate(arch, args.size, ds, args.steps, args.warmup, args.batch)
            print(arch, {k: round(v, 2) if isinstance(v, float) else v for k, v in r["models"][arch].items()}, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(r))
    if not gpus:
        return  # a smoke test: nothing to keep
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(r, indent=2))
    if args.write:
        from bench.report import write_section

        write_section("gpu-check", report(r))


if __name__ == "__main__":
    main()
