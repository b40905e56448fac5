"""Does a detector generalize? The protocols of :mod:`pipelines.generalization`, run for the table
in docs/BENCHMARKS.md: in-domain, cross-manipulation (leave one kind out), cross-domain and few-shot
ROC-AUC per architecture, from scratch (``weights=none``) and from dfk's shipped pre-trained weights
(``weights=dfk``). Every score is on images no model trained on; the pre-training corpus shares no
manipulation kind and no photograph with the sets scored here.

    apt-get install -y mate-backgrounds          # the held-out photographs (or pass --photos DIR)
    .venv/bin/python -m bench.generalization     # writes the generalization section of docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    from pipelines.generalization import STARTS

    parser = argparse.ArgumentParser()
    parser.add_argument("--archs", default="srm", help="comma-separated; arch:key=value overrides one (resnet:image_size=32)")
    parser.add_argument("--starts", default=",".join(STARTS), help="weights values to compare")
    parser.add_argument("--epochs", type=int, default=12, help="upper bound; the default recipe may stop earlier")
    parser.add_argument("--photos", help="folder of photographs for the cross-domain and few-shot sets")
    parser.add_argument("--test", type=int, default=150, help="test images per class of every held-out set")
    parser.add_argument("--leave-out-train", type=int, default=500, help="training images per class without one kind")
    parser.add_argument("--few-shot", type=int, default=200, help="training images per class of the few-shot set")
    parser.add_argument("--keep", type=Path, help="keep data and runs in this folder (default: a temporary one)")
    args = parser.parse_args()

    import mlflow

    from dfk.config import TrainConfig
    from pipelines.generalization import run_generalization

    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        base = TrainConfig.from_overrides(dict(epochs=args.epochs, gradcam_images=0))
        started = time.time()
        rows = run_generalization(base, args.archs, tmp / "sets", args.photos, args.test, args.leave_out_train,
                                  starts=tuple(args.starts.split(",")), few_shot=args.few_shot)
    report(args, base, rows, (time.time() - started) / 60)


def report(args, base, rows: list[dict], minutes: float) -> None:
    from bench.report import write_section
    from dfk.data.synth import HELD_OUT_PHOTOS, MANIPULATIONS, SynthSpec
    from pipelines.generalization import GOALS, few_shot_kinds

    spec = SynthSpec()
    protocols = list(GOALS)
    best = max(rows, key=lambda r: sum(r[k] for k in protocols))
    kinds = " | ".join(f"w/o {k}" for k in MANIPULATIONS)
    lines = [
        "## Generalization (`python -m bench.generalization`)",
        "",
        f"ROC-AUC on images no model trained on, with the default recipe, up to {args.epochs} epochs at the built-in "
        f"set's {base.image_size} px; `weights=none` trains from scratch, `weights=dfk` starts from dfk's shipped "
        f"pre-trained weights (whose corpus shares no manipulation kind and no photograph with the sets below). "
        f"In-domain: the built-in set ({spec.train} training images per class), its test split. Cross-manipulation "
        f"(leave one out): trained on {args.leave_out_train} per class whose fakes never use that kind, scored on "
        f"reals and fakes of that kind only ({args.test} per class). Cross-domain: the in-domain model scored on "
        f"reals and fakes cropped from `{args.photos or HELD_OUT_PHOTOS}` photographs with forgery parameters the "
        f"built-in set never uses (`dfk data synth --shifted`; {args.test} per class). Few-shot: trained on "
        f"{args.few_shot} per class of a set from the same photographs whose fakes use kinds no other training set "
        f"uses ({', '.join(few_shot_kinds())}), scored on its test split ({args.test} per class). "
        f"{minutes:.0f} minutes in all.",
        "",
        f"| arch | weights | in-domain | {kinds} | cross-manipulation mean | cross-domain | few-shot |",
        "| --- | --- | --- | " + " | ".join("---" for _ in MANIPULATIONS) + " | --- | --- | --- |",
    ]
    for r in rows:
        b = "**" if r is best else ""
        lines.append(f"| {b}{r['arch']}{b} | {r['weights']} | {r['in_domain']:.3f} | "
                     + " | ".join(f"{r[k]:.3f}" for k in MANIPULATIONS)
                     + " | " + " | ".join(f"{b}{r[k]:.3f}{b}" for k in protocols) + " |")
    verdicts = ", ".join(f"{k.replace('_', '-')} {best[k]:.3f} (goal {goal}: {'met' if best[k] >= goal else 'not met'})"
                         for k, goal in GOALS.items())
    lines += ["", f"Best ({best['arch']}, weights={best['weights']}): {verdicts}."]
    write_section("generalization", "\n".join(lines))


if __name__ == "__main__":
    main()
