"""Does a detector generalize? In-domain, cross-manipulation and cross-domain ROC-AUC per architecture.

* in-domain: trained on the built-in set, scored on its own test split;
* cross-manipulation (DeepfakeBench's leave-one-out): for each manipulation kind, trained on a set
  whose fakes use only the other kinds, scored on reals and fakes made only with the held-out kind;
  the table gives each kind and the mean;
* cross-domain: the in-domain model scored on a set made from other photographs (``--photos``,
  by default Debian's mate-backgrounds nature photos) with forgery parameters the built-in set
  never uses (``dfk data synth --shifted``).

Every model trains from scratch (``weights=none``) at the built-in set's native size with the
project's default recipe; every score is on images no model trained on.

    apt-get install -y mate-backgrounds          # the cross-domain photographs (or pass --photos DIR)
    .venv/bin/python -m bench.generalization     # writes the generalization section of docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Debian's mate-backgrounds: twelve nature photographs (GPL-2+) that the built-in set never uses.
DEFAULT_PHOTOS = "/usr/share/backgrounds/mate/nature"
#: Goals for the best architecture (DeepfakeBench's cross-dataset mean is 0.77).
GOAL_CROSS_MANIPULATION, GOAL_CROSS_DOMAIN = 0.80, 0.77


def score(model, folder: Path, image_size: int) -> float:
    """ROC-AUC of ``model`` on the test split of ``folder``."""
    from sklearn.metrics import roc_auc_score

    from dfk.data.pipeline import DecodeFailures, make_dataset
    from dfk.data.scan import scan
    from dfk.training.trainer import predict_split

    index = scan(folder)
    ds = make_dataset(index.paths("test"), index.labels("test"), image_size=image_size, batch_size=64,
                      failures=DecodeFailures(), with_paths=True)
    y, p, _ = predict_split(model, ds)
    return float(roc_auc_score(y, p))


#: Image size and epochs of the big backbones, trained from scratch small and short to fit a CPU.
SMALL = {"resnet": (32, 6), "efficientnet": (32, 6)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archs", default="srm,npr,cnn,resnet")
    parser.add_argument("--epochs", type=int, default=12, help="upper bound; the default recipe may stop earlier")
    parser.add_argument("--photos", default=DEFAULT_PHOTOS, help="folder of photographs for the cross-domain set")
    parser.add_argument("--test", type=int, default=150, help="test images per class of every held-out set")
    parser.add_argument("--leave-out-train", type=int, default=500, help="training images per class without one kind")
    parser.add_argument("--keep", type=Path, help="keep data and runs in this folder (default: a temporary one)")
    args = parser.parse_args()
    if not Path(args.photos).is_dir():
        raise SystemExit(f"{args.photos} does not exist: apt-get install mate-backgrounds, or pass --photos DIR")

    import mlflow

    from dfk.config import TrainConfig
    from dfk.data.synth import MANIPULATIONS, SynthSpec, builtin_dataset, generate
    from dfk.training.trainer import train

    base = SynthSpec()
    archs = args.archs.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")

        def data(name: str, **spec) -> Path:
            path = tmp / name
            if not (path / "manifest.json").exists():
                generate(SynthSpec(**{**base.__dict__, **spec}), path)
            return path

        def fit(arch: str, folder: Path, size: int):
            epochs = SMALL.get(arch, (size, args.epochs))[1]
            cfg = TrainConfig.from_overrides(dict(arch=arch, data_dir=str(folder), image_size=size, epochs=epochs,
                                                  weights="none", gradcam_images=0))
            return train(cfg, experiment="bench-generalization", log_model=False)

        held_out = dict(train=2, validation=2, test=args.test)
        in_domain = builtin_dataset()
        cross_domain = data("cross-domain", photos=args.photos, shifted=True, seed=101, **held_out)
        leave_out = {k: (data(f"without-{k}", manipulations=tuple(m for m in MANIPULATIONS if m != k), seed=102,
                              train=args.leave_out_train),
                         data(f"only-{k}", manipulations=(k,), seed=103, **held_out)) for k in MANIPULATIONS}

        for arch in archs:
            started = time.time()
            size = SMALL.get(arch, (base.image_size,))[0]
            r = fit(arch, in_domain, size)
            row = {"arch": arch, "size": size, "in_domain": r.metrics["test_roc_auc"],
                   "cross_domain": score(r.model, cross_domain, size)}
            for kind, (train_dir, test_dir) in leave_out.items():
                row[kind] = score(fit(arch, train_dir, size).model, test_dir, size)
            row["cross_manipulation"] = sum(row[k] for k in MANIPULATIONS) / len(MANIPULATIONS)
            row["minutes"] = (time.time() - started) / 60
            rows.append(row)
            print(row, flush=True)
            report(args, base, rows, None)  # written after every architecture: a long run keeps what it measured

        # How to feed a forensic detector: the same forgeries written at twice the size and resized
        # to the model's input by the loader (as any folder of larger images is), against native.
        resized = data("written-at-2x", image_size=2 * base.image_size, seed=0)
        r = fit(archs[0], resized, base.image_size)
        feeding = (archs[0], r.metrics["test_roc_auc"], next(x["in_domain"] for x in rows if x["arch"] == archs[0]))

    report(args, base, rows, feeding)


def report(args, base, rows: list[dict], feeding: tuple | None) -> None:
    from bench.report import write_section
    from dfk.data.synth import MANIPULATIONS

    best = max(rows, key=lambda r: r["cross_manipulation"] + r["cross_domain"])
    kinds = " | ".join(f"w/o {k}" for k in MANIPULATIONS)
    small = ", ".join(f"{a} at {px} px for up to {ep} epochs" for a, (px, ep) in SMALL.items()
                      if any(r["arch"] == a for r in rows))
    lines = [
        "## Generalization (`python -m bench.generalization`)",
        "",
        f"ROC-AUC on images no model trained on; every model from scratch with the default recipe, up to "
        f"{args.epochs} epochs at {base.image_size} px ({small}). In-domain: the built-in set "
        f"({base.train} training images per class), its test split. Cross-manipulation (leave one out): trained on "
        f"{args.leave_out_train} per class whose fakes never use that kind, scored on reals and fakes of that kind "
        f"only ({args.test} per class). Cross-domain: the in-domain model scored on reals and fakes cropped from "
        f"`{args.photos}` photographs with forgery parameters the built-in set never uses (`dfk data synth "
        f"--shifted`: other up-sampling factor, weaker traces, other JPEG qualities, polygonal regions; "
        f"{args.test} per class).",
        "",
        f"| arch | px | in-domain | {kinds} | cross-manipulation mean | cross-domain | minutes |",
        "| --- | --- | --- | " + " | ".join("---" for _ in MANIPULATIONS) + " | --- | --- | --- |",
    ]
    for r in rows:
        b = "**" if r is best else ""
        lines.append(f"| {b}{r['arch']}{b} | {r['size']} | {r['in_domain']:.3f} | "
                     + " | ".join(f"{r[k]:.3f}" for k in MANIPULATIONS)
                     + f" | {b}{r['cross_manipulation']:.3f}{b} | {b}{r['cross_domain']:.3f}{b} | {r['minutes']:.1f} |")
    met = best["cross_manipulation"] >= GOAL_CROSS_MANIPULATION and best["cross_domain"] >= GOAL_CROSS_DOMAIN
    lines += [
        "",
        f"Goal for the best architecture ({best['arch']}): cross-manipulation mean >= {GOAL_CROSS_MANIPULATION} and "
        f"cross-domain >= {GOAL_CROSS_DOMAIN}: **{'met' if met else 'not met'}**.",
    ]
    if feeding:
        lines += ["", f"Feeding a forensic detector: {feeding[0]} trained on the same kind of set written at "
                  f"{2 * base.image_size} px and resized to {base.image_size} px by the loader reaches test ROC-AUC "
                  f"{feeding[1]:.3f}, against {feeding[2]:.3f} when the images are written at the size it trains on."]
    write_section("generalization", "\n".join(lines))


if __name__ == "__main__":
    main()
