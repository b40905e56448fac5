"""Kaggle scale, simulated: a Kaggle-shaped folder of 100,000+ 256 px JPEGs, and what dfk does with it.

The Kaggle "deepfake-and-real-images" set holds 190,335 JPEGs of 256x256 in
``Train|Validation|Test / Fake|Real`` (140,002 / 39,428 / 10,905). This writes a folder of that
shape (``--files``, the Kaggle proportions) with the built-in generator (:mod:`dfk.data.synth`),
then measures:

* the scan (:func:`dfk.data.scan.open_data`): every header read, then again with the header cache
  warm (an unchanged folder), then after one file is touched and one added (the cache invalidates);
* one training epoch's input (the tf.data stream alone, no model): images/s and peak RSS, against
  the Pillow decoder on a part of it; peak RSS of a tenth of the epoch for comparison;
* the start-up of ``dfk train`` on the folder: seconds from the command to its first training
  step, with the header cache cold and warm;
* ``dfk score-spark`` (local[2], the Spark test's tiny model) on 1,000 and 5,000 of the files:
  images/s once running, for docs/SCALING.md's cost per million images (with PySpark and Java).

The generator makes ~20-100 images/s on 2 cores, so 100,000 would take hours: it is timed on
``--pool`` images first, and if writing every file with it would take longer than ``--max-gen-minutes``
those images become a pool that every file is a re-encoding of (JPEG quality 70-95 and a comment
with the file's number: distinct bytes, distinct names). The output says which.

    .venv/bin/python -m bench.kaggle_scale              # writes the kaggle-scale section of docs/BENCHMARKS.md

The folder lives under /tmp and is deleted at the end (``--keep DIR`` keeps it there).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: The Kaggle set's own split sizes; a folder of another size keeps their proportions.
KAGGLE_SPLITS = {"Train": 140_002, "Validation": 39_428, "Test": 10_905}
RESULTS = Path(__file__).resolve().parent / "results" / "kaggle_scale.json"
REPO = Path(__file__).resolve().parents[1]


def _hwm_mib() -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec from the parent.
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:")) / 1024


def generate_pool(out: Path, n: int, size: int) -> tuple[Path, float]:
    """``n`` distinct images (half fake) written by the built-in generator; its images per second."""
    from dfk.data.synth import SynthSpec, generate

    t = time.perf_counter()
    generate(SynthSpec(train=max(2, n // 2 - 4), validation=2, test=2, image_size=size), out)
    return out, n / (time.perf_counter() - t)


def split_counts(total: int) -> dict[str, int]:
    """Files per split (both classes together) in the Kaggle proportions."""
    whole = sum(KAGGLE_SPLITS.values())
    counts = {s: round(total * n / whole) for s, n in KAGGLE_SPLITS.items()}
    counts["Train"] += total - sum(counts.values())
    return counts


def write_kaggle(root: Path, total: int, pool: Path, threads: int = 2) -> dict:
    """``root/Train|Validation|Test/Fake|Real/{fake,real}_N.jpg``, ``total`` files, each a re-encoding of an
    image of ``pool`` (a generated set) at a quality of 70-95 with its number in a JPEG comment."""
    import numpy as np
    from PIL import Image

    sources = {cls: [np.asarray(Image.open(f).convert("RGB")) for f in sorted((pool / "Train" / cls).glob("*.jpg"))]
               for cls in ("Fake", "Real")}
    jobs = []
    for split, n in split_counts(total).items():
        for k, cls in enumerate(("Fake", "Real")):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            jobs += [(root / split / cls / f"{cls.lower()}_{i}.jpg", cls, i) for i in range(k, n, 2)]

    def write(job) -> int:
        path, cls, i = job
        src = sources[cls][i % len(sources[cls])]
        buf = io.BytesIO()
        Image.fromarray(src).save(buf, "JPEG", quality=70 + (i * 7919) % 26, comment=f"dfk bench file {i}".encode())
        path.write_bytes(buf.getvalue())
        return len(buf.getvalue())

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:  # Pillow lets go of the GIL while it encodes
        sizes = list(ex.map(write, jobs, chunksize=256))
    return {"files": len(jobs), "bytes": sum(sizes), "seconds": time.perf_counter() - t}


def kaggle_folder(root: Path, total: int, size: int, pool_size: int, max_gen_minutes: float, work: Path) -> dict:
    """Write the folder; how (generated outright, or a pool of generated images re-encoded)."""
    pool, rate = generate_pool(work / "pool", pool_size, size)
    print(f"generator: {rate:.1f} images/s on {pool_size} images at {size} px", flush=True)
    how = {"generator_rate": rate, "pool": pool_size}
    if total / rate / 60 <= max_gen_minutes:
        from dfk.data.synth import SynthSpec, generate

        counts = split_counts(total)
        t = time.perf_counter()
        half = {k: -(-n // 2) for k, n in counts.items()}  # per class, rounded up: at least ``total`` files
        generate(SynthSpec(train=half["Train"], validation=half["Validation"], test=half["Test"], image_size=size), root)
        how.update(mode="generated", files=2 * sum(half.values()), seconds=time.perf_counter() - t)
    else:
        how.update(mode="pool", **write_kaggle(root, total, pool))
        print(f"wrote {how['files']} files as re-encodings of {pool_size} generated images "
              f"({how['files'] / how['seconds']:.0f} files/s)", flush=True)
    shutil.rmtree(pool, ignore_errors=True)
    return how


def scan_figures(root: Path) -> dict:
    """The scan with the header cache cold, warm, and after a change (in this process's DFK_CACHE)."""
    from dfk.data.scan import open_data

    out = {}
    time.sleep(2.5)  # the newest files out of the header cache's "racy" window (it re-reads files younger than 2 s)
    for name in ("cold", "warm"):
        t = time.perf_counter()
        index = open_data(root)
        out[name] = {"seconds": time.perf_counter() - t, "images": sum(len(v) for v in index.samples.values()),
                     "train": len(index.paths("train")), "headers_cached": index.headers_cached,
                     "fingerprint": index.fingerprint}
        print("scan", name, {k: round(v, 2) if isinstance(v, float) else v for k, v in out[name].items()}, flush=True)
    touched = next((root / "Train" / "Fake").iterdir())
    os.utime(touched, ns=(time.time_ns(), time.time_ns() - 10**10))  # a new mtime, 10 s ago (not racy)
    added = root / "Train" / "Real" / "added_by_bench.jpg"
    shutil.copyfile(touched, added)
    os.utime(added, ns=(time.time_ns() - 10**10,) * 2)
    t = time.perf_counter()
    index = open_data(root)
    out["changed"] = {"seconds": time.perf_counter() - t, "images": sum(len(v) for v in index.samples.values()),
                      "headers_cached": index.headers_cached, "fingerprint": index.fingerprint}
    print("scan after touching one file and adding one", out["changed"], flush=True)
    added.unlink()
    return out


def epoch_child(root: str, size: int, decoder: str, limit: int) -> None:
    """Run in a subprocess: one pass of the training stream over Train (``limit`` files at most); prints JSON."""
    from dfk.config import TrainConfig
    from dfk.data.pipeline import DecodeFailures, make_dataset
    from dfk.data.scan import open_data

    index = open_data(root)
    after_scan = _hwm_mib()
    paths, labels = index.paths("train")[:limit or None], index.labels("train")[:limit or None]
    cfg = TrainConfig(image_size=size, batch_size=32)
    ds = make_dataset(paths, labels, size, 32, DecodeFailures(), training=True, cfg=cfg, seed=0,
                      info=index.info if decoder == "dfk" else None)
    n, t, cpu = 0, time.perf_counter(), time.process_time()
    for x, _ in ds:
        n += int(x.shape[0])
    seconds = time.perf_counter() - t
    print(json.dumps({"images": n, "seconds": seconds, "images_per_s": n / seconds,
                      "cpu_us_per_image": (time.process_time() - cpu) / n * 1e6,
                      "rss_after_scan_mib": after_scan, "peak_rss_mib": _hwm_mib()}))


def first_step_child(args: list[str]) -> None:
    """Run in a subprocess: ``dfk train ARGS`` that prints the seconds since this process started when
    its first training step ends, then exits."""
    import keras

    fit = keras.Model.fit

    class FirstStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            print(json.dumps({"first_step_s": time.time() - START}), flush=True)
            os._exit(0)

    def fit_until_first_step(self, *a, callbacks=None, **kw):
        return fit(self, *a, callbacks=[*(callbacks or []), FirstStep()], **kw)

    keras.Model.fit = fit_until_first_step
    from dfk.cli import app

    app(["train", *args], standalone_mode=True)


START = time.time()


def spark_figures(root: Path, work: Path, counts=(1000, 5000)) -> dict | None:
    """``dfk score-spark``'s path (local[2]) on ``counts`` files of ``root``, with the tiny model the
    Spark test uses (cnn, 32 px, trained for one epoch on a tiny built-in set, registered as champion):
    job seconds for each count, the marginal images/s between them (start-up excluded), and
    ``predict_files`` in one process on the same files for comparison. None without PySpark."""
    import importlib.util

    if importlib.util.find_spec("pyspark") is None or shutil.which("java") is None:
        print("spark: skipped (pip install -e '.[spark]' and a Java runtime)", flush=True)
        return None
    import mlflow

    from dfk.config import TrainConfig
    from dfk.data.synth import SynthSpec, generate
    from dfk.evaluation.scoring import predict_files
    from dfk.serving.detector import load_detector
    from dfk.serving.spark import score_to_files, session
    from dfk.training.trainer import train

    mlflow.set_tracking_uri(f"sqlite:///{work}/spark-store.db")
    tiny = generate(SynthSpec(train=12, validation=6, test=6, image_size=64, seed=1), work / "tiny")
    result = train(TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(tiny), image_size=32, batch_size=8,
                                                   epochs=1, weights="none", gradcam_images=0)), experiment="spark")
    version = mlflow.register_model(result.model_uri or f"runs:/{result.run_id}/model", "deepfake-detector")
    mlflow.MlflowClient().set_registered_model_alias("deepfake-detector", "champion", version.version)
    uri = "models:/deepfake-detector@champion"
    files = sorted(str(p) for p in (root / "Train").rglob("*.jpg"))
    warmup = min(200, counts[0])
    out = {"counts": list(counts), "warmup": warmup, "spark_seconds": [], "predict_seconds": []}
    spark = session("local[2]")
    try:
        # The first job starts the executors' Python processes, TensorFlow and the model; the next two
        # reuse them, and their difference is the rate of scoring alone.
        for job, n in enumerate((warmup, *counts)):
            part = work / f"spark-{job}"
            for f in files[:n]:
                dst = part / Path(f).relative_to(root)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(f, dst)
            done = score_to_files([str(part)], str(work / f"scores-{job}.parquet"), uri)
            assert done.rows == n and done.errors == 0, done
            detector = load_detector(uri)
            t = time.perf_counter()
            predict_files(detector, [Path(f) for f in files[:n]], 32)
            predicted = time.perf_counter() - t
            print("spark", n, "files:", round(done.seconds, 1), "s; predict_files:", round(predicted, 1), "s", flush=True)
            if job == 0:
                out["warmup_seconds"] = done.seconds
            else:
                out["spark_seconds"].append(done.seconds)
                out["predict_seconds"].append(predicted)
    finally:
        spark.stop()
    return _spark_rates(out)


def _spark_rates(out: dict) -> dict:
    """Images/s of the largest job (its tasks' set-up included: each task sets the UDFs up, and in
    local mode MLflow loads the model per task; the executors' Python already running)."""
    out.pop("spark_startup_s", None)  # (an earlier estimate)
    out["spark_images_per_s"] = out["counts"][-1] / out["spark_seconds"][-1]
    out["predict_images_per_s"] = out["counts"][-1] / out["predict_seconds"][-1]
    return out


def _child(*args: str, env: dict | None = None) -> dict:
    # This process's MLflow settings (an experiment id of the Spark part's store) are not the child's.
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run([sys.executable, "-m", "bench.kaggle_scale", *args], capture_output=True, text=True,
                         cwd=REPO, env={**base, **(env or {})})
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"bench.kaggle_scale {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def first_step(root: Path, size: int, cache: Path, store: Path) -> float:
    t = time.time()
    _child("--first-step-child", "-d", str(root), "-P", "arch=cnn", "-P", f"image_size={size}", "-P", "epochs=1",
           "-P", "weights=none", "-P", "gradcam_images=0",
           env={"DFK_CACHE": str(cache), "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db"})
    return time.time() - t  # from the parent's spawn, so Python's own start-up counts too


def report(r: dict) -> str:
    how = r["folder"]
    files = how["files"]
    made = (f"all {files:,} generated by `dfk.data.synth` ({how['generator_rate']:.0f} images/s)"
            if how["mode"] == "generated" else
            f"{how['pool']:,} images generated by `dfk.data.synth` ({how['generator_rate']:.1f} images/s on this "
            f"machine: {files / how['generator_rate'] / 3600:.1f} h for all), each file a re-encoding of one of them at "
            f"JPEG quality 70-95 with its number in a comment (distinct bytes; written at "
            f"{files / how['seconds']:.0f} files/s, {how['bytes'] / 2**20:.0f} MiB)")
    s, e = r["scan"], r["epoch"]
    lines = [
        "## Kaggle scale, simulated (`python -m bench.kaggle_scale`)",
        "",
        f"A folder shaped like the Kaggle set (Train/Validation/Test x Fake/Real, its proportions), {files:,} "
        f"JPEGs of {r['size']} px: {made}. Files in the OS page cache (just written); dfk's header cache in a fresh folder.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| scan, every header read (`open_data`) | {s['cold']['seconds']:.1f} s ({s['cold']['images'] / s['cold']['seconds']:,.0f} headers/s) |",
        f"| scan again, folder unchanged (header cache) | {s['warm']['seconds']:.1f} s, {s['warm']['headers_cached']:,} of "
        f"{s['warm']['images']:,} headers from the cache, same fingerprint: {s['warm']['fingerprint'] == s['cold']['fingerprint']} |",
        f"| scan after touching one file and adding one | {s['changed']['seconds']:.1f} s, "
        f"{s['changed']['images'] - s['changed']['headers_cached']} headers read |",
        f"| one epoch's input, training stream over Train ({e['dfk']['images']:,} images, batch 32, flips; no model) | "
        f"{e['dfk']['images_per_s']:,.0f} images/s, {e['dfk']['seconds']:.0f} s, {e['dfk']['cpu_us_per_image']:.0f} CPU-µs per image |",
        f"| the same with the Pillow decoder only (first {e['pillow']['images']:,} images) | "
        f"{e['pillow']['images_per_s']:,.0f} images/s ({e['dfk']['images_per_s'] / e['pillow']['images_per_s']:.2f}x slower "
        f"than dfk's routed decoding) |",
        f"| peak RSS of that epoch (process: index of {s['cold']['images']:,} files, TensorFlow, stream) | "
        f"{e['dfk']['peak_rss_mib']:,.0f} MiB ({e['dfk']['rss_after_scan_mib']:,.0f} MiB after the scan) |",
        f"| peak RSS streaming a tenth of the epoch ({e['tenth']['images']:,} images) | {e['tenth']['peak_rss_mib']:,.0f} MiB "
        f"(full / tenth: {e['dfk']['peak_rss_mib'] / e['tenth']['peak_rss_mib']:.2f}) |",
        f"| `dfk train` (cnn, {r['size']} px) from the command to the end of its first step, header cache cold | "
        f"{r['first_step']['cold']:.1f} s |",
        f"| the same, header cache warm | {r['first_step']['warm']:.1f} s |",
    ]
    if sp := r.get("spark"):
        per_million_h = 1e6 / sp["spark_images_per_s"] / 3600
        lines += [
            "",
            f"`dfk score-spark` in local mode (`local[2]`, this machine's 2 cores) with the tiny model of the Spark test "
            f"(cnn, 32 px input): after a first job of {sp['warmup']} files ({sp['warmup_seconds']:.1f} s: it starts "
            f"the executors' Python, TensorFlow and the model), {sp['counts'][0]:,} and {sp['counts'][-1]:,} of these "
            f"files took {sp['spark_seconds'][0]:.1f} s and {sp['spark_seconds'][-1]:.1f} s, end to end (read, decode, "
            f"score, write Parquet): **{sp['spark_images_per_s']:,.0f} images/s**; `predict_files` in one process on "
            f"the same {sp['counts'][-1]:,}: {sp['predict_images_per_s']:,.0f} images/s. Extrapolated, "
            f"not measured: a million such images take ~{per_million_h:.1f} h on these 2 cores "
            f"(~{2 * per_million_h:.1f} core-hours).",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--pool", type=int, default=1000, help="images generated first (timed)")
    parser.add_argument("--max-gen-minutes", type=float, default=15.0,
                        help="generate every file if that takes at most this long, else re-encode the pool")
    parser.add_argument("--pillow-images", type=int, default=10_000, help="images the Pillow-only epoch decodes")
    parser.add_argument("--spark-files", default="1000,5000", help="files dfk score-spark scores, twice (the "
                        "difference gives images/s without the start-up)")
    parser.add_argument("--keep", help="write the folder here and keep it (default: a temporary folder under /tmp)")
    parser.add_argument("--report-only", action="store_true", help="write the section again from "
                        "bench/results/kaggle_scale.json, measuring nothing")
    parser.add_argument("--epoch-child", nargs=4, metavar=("ROOT", "SIZE", "DECODER", "LIMIT"), help=argparse.SUPPRESS)
    parser.add_argument("--first-step-child", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.epoch_child:
        root, size, decoder, limit = args.epoch_child
        return epoch_child(root, int(size), decoder, int(limit))
    if args.first_step_child:
        return first_step_child(rest)

    from bench.report import write_section

    if args.report_only:
        r = json.loads(RESULTS.read_text())
        if r.get("spark"):
            _spark_rates(r["spark"])
        RESULTS.write_text(json.dumps(r, indent=2))
        return write_section("kaggle-scale", report(r))
    work = Path(tempfile.mkdtemp(prefix="dfk-kaggle-", dir="/tmp"))
    root = Path(args.keep) if args.keep else work / "kaggle"
    cache = work / "cache"
    os.environ["DFK_CACHE"] = str(cache)  # this run's header cache, cold at first; children inherit it
    try:
        r = {"size": args.size, "folder": kaggle_folder(root, args.files, args.size, args.pool, args.max_gen_minutes, work)}
        r["scan"] = scan_figures(root)
        r["epoch"] = {}
        for name, decoder, limit in (("dfk", "dfk", 0), ("pillow", "pillow", args.pillow_images),
                                     ("tenth", "dfk", r["scan"]["cold"]["train"] // 10)):
            r["epoch"][name] = _child("--epoch-child", str(root), str(args.size), decoder, str(limit))
            print("epoch", name, {k: round(v, 1) for k, v in r["epoch"][name].items()}, flush=True)
        r["spark"] = spark_figures(root, work, tuple(int(n) for n in args.spark_files.split(",")))
        (work / "store").mkdir()
        shutil.rmtree(cache / "index", ignore_errors=True)
        r["first_step"] = {"cold": first_step(root, args.size, cache, work / "store")}
        r["first_step"]["warm"] = first_step(root, args.size, cache, work / "store")
        print("first step", r["first_step"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(r, indent=2))
    write_section("kaggle-scale", report(r))


if __name__ == "__main__":
    main()
