"""Commands that score and explain images: predict, gradcam, and the web app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from dfk.cli.common import (_quiet_tensorflow, _report_skip, _unset, app, user_errors)
from dfk.errors import UserError
from dfk.settings import SETTINGS


@app.command()
@user_errors
def predict(
    model: Annotated[str, typer.Argument(help="runs:/RUN/model, models:/NAME@ALIAS or a local model folder.")],
    inputs: Annotated[List[Path], typer.Argument(help="Image and video files and/or folders.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV to write (path, probability_fake, label).")] = Path("predictions.csv"),
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 32,
    frames: Annotated[str, typer.Option(help="Frames scored per video: a count spread over it (16) or a rate (2fps).")] = "16",
    aggregate: Annotated[str, typer.Option(help="A video's score from its frames': mean (DeepfakeBench's), max or median.")] = "mean",
) -> None:
    """Score image and video files and folders in batches; write a CSV; skip and report unreadable files.

    A video gets one row (its frames' scores aggregated) and a timeline, OUT's stem + _timelines/NAME.json
    and .png. A model trained on face crops scores each face (the photo's row: its most fake face, label
    no_face when none is found); the faces are listed in OUT with .json instead of .csv."""
    import csv
    import json

    from dfk.data.video import Sampling, is_video
    from dfk.evaluation.media import AGGREGATES, collect_media

    files = collect_media(inputs)
    sampling = Sampling.parse(frames)
    if aggregate not in AGGREGATES:
        raise UserError(f"unknown aggregate {aggregate!r}; choose from {', '.join(AGGREGATES)}")
    _quiet_tensorflow()
    from rich.progress import Progress

    from dfk.evaluation.media import predict_media
    from dfk.serving.detector import load_detector

    detector = load_detector(model)
    details = detector.faces is not None or any(map(is_video, files))
    timelines = out.with_name(out.stem + "_timelines") if any(map(is_video, files)) else None
    with Progress(transient=True) as bar:
        task = bar.add_task("scoring", total=len(files))
        rows = predict_media(detector, files, batch_size, sampling, aggregate, timelines, _report_skip,
                             lambda n: bar.advance(task, n))
    tmp = out.with_name(out.name + ".part")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "probability_fake", "label"])
        w.writerows((r["path"], "" if r["probability_fake"] is None else f"{r['probability_fake']:.6f}", r["label"])
                    for r in rows)
    tmp.replace(out)
    if details:
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    skipped = len(files) - len(rows)
    typer.echo(f"wrote {len(rows)} predictions to {out}" + (f" (faces and frames in {out.with_suffix('.json')})" if details else "")
               + (f"; timelines in {timelines}" if timelines else "") + (f"; skipped {skipped} unreadable" if skipped else ""))


@app.command("gradcam")
@user_errors
def gradcam_cmd(
    model: Annotated[str, typer.Argument(help="runs:/RUN/model, models:/NAME@ALIAS or a local model folder.")],
    inputs: Annotated[List[Path], typer.Argument(help="Image files and/or folders (an image file or a folder of them).")],
    out: Annotated[Optional[str], typer.Option("--out", "-o", help=(
        f"Folder for the overlays and the gallery; default: ./{SETTINGS.gradcam_out} (under mlflow run, whose "
        f"working folder is the project checkout: the entry point's run, under {SETTINGS.gradcam_out}/)."))] = None,
    layer: Annotated[Optional[str], typer.Option(help="Target layer; default: the last convolutional map of at least 8x8.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per gradient pass.")] = 16,
) -> None:
    """Grad-CAM overlays for images, plus one gallery PNG (original | heatmap | overlay)."""
    from dfk.data.decode import collect_images

    files = collect_images(inputs)
    _quiet_tensorflow()
    from dfk.explain.gradcam import explain_files
    from dfk.serving.detector import load_detector

    def written(path, prob, label, overlay_path):
        typer.echo(f"{path}\t{prob:.4f}\t{label}\t{overlay_path}")

    from dfk.runs.tracking import local_output

    with local_output(out, SETTINGS.gradcam_out) as (folder, in_run):
        r = explain_files(load_detector(model), files, folder, _unset(layer), batch_size, on_written=written,
                          on_skip=_report_skip)
        if in_run:
            import mlflow

            mlflow.MlflowClient().log_artifacts(in_run, str(folder), SETTINGS.gradcam_out)
            folder = f"runs:/{in_run}/{SETTINGS.gradcam_out}"
    typer.echo(f"wrote {r.written} overlays and the gallery to {folder}" + (f"; skipped {r.skipped}" if r.skipped else ""))


# ----------------------------------------------------------------------------- web app
@app.command("app")
@user_errors
def app_cmd(
    model: Annotated[str, typer.Argument(help="runs:/RUN/model, models:/NAME@ALIAS or a local model folder.")] = SETTINGS.champion_uri,
    port: Annotated[int, typer.Option(help="Port on the host.")] = SETTINGS.app_port,
    host: Annotated[str, typer.Option(help="Interface to listen on; the default keeps the app on this machine.")] = "127.0.0.1",
    mlflow_ui: Annotated[Optional[str], typer.Option("--mlflow-ui", help="MLflow UI address for run links (default: the tracking URI when it is http).")] = None,
    max_mb: Annotated[float, typer.Option(min=0.001, help="Largest upload in MB.")] = 20.0,
    max_files: Annotated[int, typer.Option(min=1, help="Most images the page accepts at a time.")] = 12,
    layer: Annotated[Optional[str], typer.Option(help="Grad-CAM target layer (default: the last convolutional map).")] = None,
    allowed_host: Annotated[Optional[list[str]], typer.Option("--allowed-host", help="Another name browsers reach this machine by (repeatable); other Host headers are refused.")] = None,
) -> None:
    """Web page on HOST:PORT: drop images, get p(fake), the verdict and a Grad-CAM overlay."""
    _quiet_tensorflow()
    from dfk.app.server import Limits, serve

    serve(model, host=host, port=port, ui_url=_unset(mlflow_ui),
          limits=Limits(max_bytes=int(max_mb * 2**20), max_files=max_files), layer=_unset(layer),
          extra_hosts=tuple(allowed_host or ()))
