"""``dfk data synth`` and ``dfk data inspect``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from dfk.cli.common import (data_app, user_errors)
from dfk.config import TrainConfig


# ----------------------------------------------------------------------------- data
@data_app.command("synth")
@user_errors
def data_synth(
    out: Annotated[Path, typer.Argument(help=(
        "New folder to write Train|Validation|Test / Fake|Real into (under mlflow run, which works in the "
        "project checkout, give an absolute path)."))],
    train: Annotated[Optional[int], typer.Option(help="Images per class in Train.")] = None,
    validation: Annotated[Optional[int], typer.Option(help="Images per class in Validation.")] = None,
    test: Annotated[Optional[int], typer.Option(help="Images per class in Test.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Side of the square images in pixels.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Generator seed; the same seed gives the same files.")] = None,
    manipulations: Annotated[Optional[str], typer.Option(
        help="Comma-separated kinds fakes draw from (splice, upsample, colour, double_jpeg); default: all.")] = None,
    photos: Annotated[Optional[str], typer.Option(
        help="Folder of photographs to crop reals (and splice donors) from; default: the built-in ones.")] = None,
    shifted: Annotated[bool, typer.Option(
        help="Forgery parameters the default set never uses (for cross-domain tests).")] = False,
) -> None:
    """Write the built-in synthetic forgery set (with manipulation masks) into OUT."""
    import dataclasses

    from rich.progress import Progress

    from dfk.data.synth import SynthSpec, generate

    kinds = tuple(m.strip() for m in manipulations.split(",") if m.strip()) if manipulations is not None else None
    given = dict(train=train, validation=validation, test=test, image_size=image_size, seed=seed,
                 manipulations=kinds, photos=photos, shifted=shifted or None)
    spec = dataclasses.replace(SynthSpec(), **{k: v for k, v in given.items() if v is not None})
    spec.validate()
    total = 2 * (spec.train + spec.validation + spec.test)
    with Progress(transient=True) as bar:
        task = bar.add_task("writing images", total=total)
        path = generate(spec, out, progress=lambda n: bar.advance(task, n))
    typer.echo(f"wrote {total} images ({spec.image_size} px) and {total // 2} masks to {path}")


@data_app.command("inspect")
@user_errors
def data_inspect(
    data_dir: Annotated[str, typer.Argument(help="Image folder (Kaggle layout or flat Fake|Real), or builtin.")],
    val_split: Annotated[float, typer.Option(help="Validation (and test) fraction for flat folders.")] = TrainConfig.val_split,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Counts per split/class, bad files, fingerprint and a format-leakage check."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from dfk.data.leakage import LEAK_ACCURACY, check_leakage
    from dfk.data.scan import open_data

    with Progress(transient=True, disable=as_json) as bar:
        task = bar.add_task("reading image headers", total=None)
        index = open_data(data_dir, val_split=val_split, progress=lambda n: bar.advance(task, n))
    reports = check_leakage(index)
    leaks = [r for r in reports if r.leaks]
    if as_json:
        out = index.summary()
        out["bad_file_list"] = [{"path": p, "reason": r} for p, r in index.bad_files]
        out["leakage"] = [{"cue": r.cue, "balanced_accuracy": r.accuracy, "leaks": r.leaks, "real": r.real, "fake": r.fake}
                          for r in reports]
        typer.echo(json.dumps(out, indent=2))
    else:
        console = Console(soft_wrap=True)  # paths stay whole, so they can be copied
        console.print(f"[bold]{index.root}[/]  layout: {index.layout}  fingerprint: {index.fingerprint}")
        t = Table("split", "real", "fake", "total")
        for split, c in index.counts().items():
            t.add_row(split, str(c["real"]), str(c["fake"]), str(c["real"] + c["fake"]))
        console.print(t)
        console.print(f"ignored (not images): {index.ignored_files}   bad files: {len(index.bad_files)}")
        for p, reason in index.bad_files[:50]:
            console.print(f"  [red]bad[/] {p}: {reason}", markup=True, highlight=False)
        if len(index.bad_files) > 50:
            console.print(f"  ... and {len(index.bad_files) - 50} more")
        t = Table("cue", "balanced acc. from this cue alone", "real", "fake", title="format leakage")
        for r in reports:
            t.add_row(r.cue, f"{r.accuracy:.3f}" + (" LEAK" if r.leaks else ""), _short(r.real), _short(r.fake))
        console.print(t)
    for r in leaks:
        typer.echo(f"dfk: warning: {r.cue} alone separates fakes from reals "
                   f"(balanced accuracy {r.accuracy:.2f} > {LEAK_ACCURACY:.2f}); a model may learn the container, "
                   "not the forgery", err=True)


def _short(d: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(d.items())[:4])
