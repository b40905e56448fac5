"""Native resolution: train srm on random crops at the pictures' own resolution vs on resized pictures,
and score the test split three ways: resized to the input size, the whole picture in one forward pass,
and the mean over a grid of crops. Picks :data:`dfk.data.views.NATIVE_SCORING`.

The built-in set at 192 px is trained on at 64 px: a resize shrinks each picture 3x (the situation of
a 1000 px photo and a 256 px model), a crop keeps its pixels. A few epochs on 2 CPU cores: the figures
compare the ways side by side, they are not the model's best.

    .venv/bin/python -m bench.crops     # writes the native-resolution section of docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SCORINGS = ("resize", "full", "crops")


def train(index, cfg, native: bool):
    """srm fitted ``cfg.epochs`` epochs on ``index``'s Train split, by crops (``native``) or resized."""
    import keras

    from dfk.data.pipeline import DecodeFailures, make_dataset
    from dfk.models import create_model, get_spec
    from dfk.training.fit import compile_model

    keras.utils.set_random_seed(cfg.seed)
    model, _ = create_model(cfg.arch, cfg.image_size)
    compile_model(model, get_spec(cfg.arch).learning_rate)
    ds = make_dataset(index.paths("train"), index.labels("train"), cfg.image_size, cfg.batch_size, DecodeFailures(),
                      training=True, cfg=cfg, seed=cfg.seed, info=index.info, native=native)
    start = time.perf_counter()
    model.fit(ds, epochs=cfg.epochs, verbose=0)
    return model, time.perf_counter() - start


def score(model, pictures, size: int, how: str, batch: int = 32):
    """Probabilities of fake of decoded ``pictures``, brought to the model ``how``; and seconds taken."""
    import numpy as np

    from dfk.data.views import scoring_views
    from dfk.models.any_size import any_size_model

    scorer = model if how == "resize" else any_size_model(model)
    start = time.perf_counter()
    views = [scoring_views(p, size, how != "resize", None if how == "resize" else how) for p in pictures]
    flat = np.concatenate(views).astype(np.float32)  # the built-in pictures share one size
    out = np.concatenate([np.asarray(scorer(flat[i:i + batch], training=False)).reshape(-1)
                          for i in range(0, len(flat), batch)])
    ends = np.cumsum([len(v) for v in views])
    probs = np.array([out[e - len(v):e].mean() for e, v in zip(ends, views)])
    return probs, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--picture-size", type=int, default=192, help="side of the built-in pictures")
    parser.add_argument("--image-size", type=int, default=64, help="the model's input size")
    parser.add_argument("--train", type=int, default=600, help="training pictures per class")
    parser.add_argument("--test", type=int, default=150, help="test pictures per class")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave docs/ alone")
    args = parser.parse_args()

    import numpy as np

    from dfk.config import TrainConfig
    from dfk.data.decode import read_image
    from dfk.data.views import NATIVE_CROPS
    from dfk.data.scan import scan
    from dfk.data.synth import SynthSpec, generate
    from dfk.metrics.binary import evaluate_predictions

    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(SynthSpec(image_size=args.picture_size, train=args.train, validation=60, test=args.test, seed=0),
                        Path(tmp) / "set")
        index = scan(root)
        cfg = TrainConfig.from_overrides(dict(arch="srm", image_size=args.image_size, epochs=args.epochs, seed=0))
        pictures = [read_image(p) for p in index.paths("test")]
        y = np.asarray(index.labels("test"))
        for native in (False, True):
            model, seconds = train(index, cfg, native)
            for how in SCORINGS:
                probs, took = score(model, pictures, args.image_size, how)
                m = evaluate_predictions(y, probs, 0.5).metrics
                rows.append((native, how, m["roc_auc"], m["accuracy"], len(pictures) / took, seconds))
                print(rows[-1], flush=True)
    minutes = (time.time() - started) / 60
    report(args, rows, minutes, NATIVE_CROPS)


def report(args, rows, minutes: float, crops: int) -> None:
    trained = {False: "resized", True: "native crops"}
    scored = {"resize": f"resized to {args.image_size} px", "full": "whole picture, one pass",
              "crops": f"mean of a grid of up to {crops} crops"}
    lines = [
        "## Native resolution: training crops and scoring the whole picture (bench/crops.py)",
        "",
        f"srm trained {args.epochs} epochs at {args.image_size} px on the built-in set drawn at {args.picture_size} px "
        f"({args.train} training pictures per class, default augmentation), then scored on its {2 * args.test} test "
        "pictures three ways. Trained on *resized* pictures is the behaviour before `native_resolution`; *native crops*: "
        "a random crop of the input size at the picture's own resolution, a new one every epoch. Accuracy at 0.5 "
        "(no threshold chosen); images/s of scoring on this machine's CPU.",
        "",
        "| trained on | scored on | ROC-AUC | accuracy | scoring images/s | training s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for native, how, auc, acc, rate, seconds in rows:
        lines.append(f"| {trained[native]} | {scored[how]} | {auc:.3f} | {acc:.3f} | {rate:.0f} | {seconds:.0f} |")
    lines += ["", f"Run time {minutes:.1f} min."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        from bench.report import write_section

        write_section("crops", body)


if __name__ == "__main__":
    main()
