"""``dfk data synth``, ``dfk data check`` and ``dfk data inspect``."""

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
    manipulations: Annotated[Optional[str], typer.Option(help=(
        "Comma-separated kinds fakes draw from: splice, upsample, colour, double_jpeg (the default set), "
        "self_blend, boundary_blend, copy_move, inpaint, resample, retouch, noise."))] = None,
    photos: Annotated[Optional[str], typer.Option(help=(
        "Folder of photographs to crop reals (and splice donors) from, or 'pretrain' for the pre-training "
        "corpus; default: the built-in ones."))] = None,
    shifted: Annotated[bool, typer.Option(
        help="Forgery parameters the default set never uses (for cross-domain tests).")] = False,
    broad: Annotated[bool, typer.Option(help=(
        "Every region shape, traces from strong to subtle, and resampling and JPEG re-compression applied "
        "to reals and fakes alike (for pre-training)."))] = False,
    from_reals: Annotated[Optional[Path], typer.Option("--from-reals", metavar="DIR", help=(
        "Make a complete set from a folder of your own REAL photographs only: reals are random crops of "
        "them, fakes are self-blended and boundary-blended forgeries of them (no fake examples needed). "
        "Short for --photos DIR --manipulations self_blend,boundary_blend --broad."))] = None,
) -> None:
    """Write a synthetic forgery set (with manipulation masks) into OUT: the built-in one by default.

    Example, a fine-tuning set from your own photographs: dfk data synth data/mine --from-reals ~/Pictures/holiday
    """
    import dataclasses

    from rich.progress import Progress

    from dfk.data.synth import SELF_BLENDS, SynthSpec, generate, source_photos
    from dfk.errors import UserError

    kinds = tuple(m.strip() for m in manipulations.split(",") if m.strip()) if manipulations is not None else None
    if from_reals is not None:
        if photos is not None:
            raise UserError("give --from-reals DIR or --photos DIR, not both")
        if not from_reals.expanduser().is_dir():
            raise UserError(f"--from-reals {from_reals}: no such folder; give a folder of your real photographs")
        photos, kinds, broad = str(from_reals.expanduser()), kinds or SELF_BLENDS, not shifted
    given = dict(train=train, validation=validation, test=test, image_size=image_size, seed=seed,
                 manipulations=kinds, photos=photos, shifted=shifted or None, broad=broad or None)
    spec = dataclasses.replace(SynthSpec(), **{k: v for k, v in given.items() if v is not None})
    spec.validate()
    if from_reals is not None:
        source_photos(spec.photos)  # a folder without 2 readable photographs fails before anything is written
    total = 2 * (spec.train + spec.validation + spec.test)
    with Progress(transient=True) as bar:
        task = bar.add_task("writing images", total=total)
        path = generate(spec, out, progress=lambda n: bar.advance(task, n))
    typer.echo(f"wrote {total} images ({spec.image_size} px) and {total // 2} masks to {path}")


@data_app.command("prepare")
@user_errors
def data_prepare(
    src: Annotated[Path, typer.Argument(help=(
        "Folder of real and fake videos and/or photos: Fake|Real folders, FaceForensics++'s original_sequences|"
        "manipulated_sequences, or Celeb-DF's Celeb-real|Celeb-synthesis|YouTube-real."))],
    out: Annotated[Path, typer.Argument(help="New folder for the face crops, in the Kaggle layout (Train|Validation|Test / Fake|Real).")],
    frames: Annotated[str, typer.Option(help="Frames sampled per video: a count spread over it (16) or a rate (2fps).")] = "16",
    margin: Annotated[Optional[float], typer.Option(help="Crop margin, a fraction of the face's longer side on each side.")] = None,
    size: Annotated[Optional[int], typer.Option(help="Side of the square crops in pixels.")] = None,
    val_split: Annotated[float, typer.Option(help="Fraction of the sources (videos, people) for validation, and again for test.")] = TrainConfig.val_split,
    seed: Annotated[int, typer.Option(help="Seed of the split by source.")] = TrainConfig.seed,
    experiment: Annotated[Optional[str], typer.Option(help="MLflow experiment of the preparation's runs.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Cut the crops again even if OUT holds them from the same inputs.")] = False,
) -> None:
    """Cut face crops from videos and photos into OUT, split by source video (never by frame); an MLflow run.

    Sampled frames of each video and each photo are searched for faces and the largest is cut by the crop
    rule (recorded in OUT/faces.json: a model trained there scores faces cut the same way, with -P faces=true).
    The run (a step of the prepare pipeline, reused when nothing changed) has the source as its dataset
    input and the report: videos read, frames sampled, faces found, files that failed."""
    import dataclasses

    from dfk.cli.common import _quiet_tensorflow
    from dfk.data.faces import CropRule
    from dfk.data.prepare import PrepareSpec
    from dfk.settings import SETTINGS

    rule = dataclasses.replace(CropRule(), **{k: v for k, v in dict(margin=margin, size=size).items() if v is not None})
    spec = PrepareSpec(str(src), str(out), frames, rule, val_split, seed)
    spec.validate()
    _quiet_tensorflow()
    from pipelines.prepare import run_prepare

    r = run_prepare(faces=spec, val_split=val_split, experiment=experiment or SETTINGS.experiment, force=force)
    f = r.faces
    typer.echo(f"{f['layout']}: {f['videos_read']} videos and {f['photos_read']} photos read, {f['frames_sampled']} "
               f"frames sampled, {f['frames_with_face']} with a face; {f['faces_written']} crops of {f['sources']} "
               f"sources written to {r.data_dir}" + (" (reused)" if f["reused"] else ""))
    for split, c in f["counts"].items():
        typer.echo(f"  {split:<11} real {c['real']:>6}  fake {c['fake']:>6}")
    for item in f["failed"][:10]:
        typer.echo(f"dfk: failed {item['path']}: {item['reason']}", err=True)
    if len(f["failed"]) > 10:
        typer.echo(f"dfk: ... and {len(f['failed']) - 10} more failed (data/failed_files.tsv of run {f['run_id']})", err=True)
    typer.echo(f"run {f['run_id']}; train on it: dfk train -d {r.data_dir} -P faces=true")


@data_app.command("check")
@user_errors
def data_check(
    data_dir: Annotated[str, typer.Argument(help=(
        "Image folder: Train|Validation|Test / Fake|Real, a flat Fake|Real, or the folder the Kaggle archive "
        "unpacked to (its one data folder is found inside)."))],
    sample: Annotated[int, typer.Option(min=0, help=(
        "Image headers read per split and class (0: all, as training does before it starts)."))] = 200,
    val_split: Annotated[float, typer.Option(
        help="Validation (and test) fraction for flat folders.")] = TrainConfig.val_split,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of lines.")] = False,
) -> None:
    """Will this folder train? Layout, images per split and class, bad files; exit 0 or 2.

    Reads the folder listing and a sample of image headers only, so it answers
    in seconds even for the Kaggle set's 190,000 images (`dfk data inspect`
    reads every header and checks for format leakage).
    """
    from dfk.data.scan import check_folder
    from dfk.errors import UserError

    c = check_folder(data_dir, val_split=val_split, sample=sample)
    split, name, smallest = c.smallest
    if as_json:
        typer.echo(json.dumps(c.summary(), indent=2))
    else:
        typer.echo(f"folder: {c.root}")
        shape = ("Train|Validation|Test / Fake|Real" if c.layout == "kaggle"
                 else f"Fake|Real, split by val_split={val_split:g}")
        typer.echo(f"layout: {c.layout} ({shape})")
        typer.echo(f"{'split':<12}{'real':>10}{'fake':>10}")
        for s, counts in c.counts.items():
            typer.echo(f"{s:<12}{counts['real']:>10}{counts['fake']:>10}")
        total = sum(sum(v.values()) for v in c.counts.values())
        bad = (f"{len(c.bad_files)} bad among {c.headers_read} headers read of {total} images"
               + (f" (about {c.bad_estimate} in all)" if c.sampled and c.bad_files else ""))
        typer.echo(f"bad files: {bad}; not images (ignored): {c.ignored_files}")
        for p, reason in c.bad_files[:10]:
            typer.echo(f"  bad {p}: {reason}")
        if len(c.bad_files) > 10:
            typer.echo(f"  ... and {len(c.bad_files) - 10} more")
        typer.echo(f"smallest class: {smallest} images ({split}/{name.capitalize()})")
    if c.problems:
        raise UserError(f"{data_dir} will not train: {'; '.join(c.problems)}")
    if not as_json:
        typer.echo(f"ok: this folder will train (dfk train -d {data_dir})")


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
