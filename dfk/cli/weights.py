"""``dfk weights fetch``: ImageNet weights into Keras' cache, for machines that train offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from dfk.cli.common import _quiet_tensorflow, app, user_errors
from dfk.models import get_spec, list_models

weights_app = typer.Typer(help="ImageNet weights of the transfer models: fetch them where Keras looks.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")

#: The architectures with ImageNet weights (the registry's ``pretrained``), for the help text.
PRETRAINED = [a for a in list_models() if get_spec(a).pretrained]


@weights_app.command("fetch")
@user_errors
def weights_fetch(
    archs: Annotated[Optional[List[str]], typer.Argument(
        help=f"Architectures; default: every one with ImageNet weights ({', '.join(PRETRAINED)}).",
        show_default=False)] = None,
) -> None:
    """Download ImageNet weights into Keras' cache and print where each file went.

    The no-top weights of ARCHS go to KERAS_HOME/models (default ~/.keras/models),
    where Keras' application constructors look; a file already there is kept.
    Copy them into the same folder on an offline machine: weights=auto or
    imagenet then finds them (or pass weights=backbone:PATH). Offline, each
    architecture not cached fails with one line, and the exit code is 2.
    """
    for arch in archs or PRETRAINED:
        get_spec(arch)  # an unknown name fails before anything is fetched, listing the valid ones
    _quiet_tensorflow()
    from dfk.models.weights import WEIGHTS_HOST, _can_download, cache_path, imagenet_file

    failures = []
    online: bool | None = None
    for arch in archs or PRETRAINED:
        file_name = imagenet_file(arch)
        if file_name is None:
            failures.append(f"{arch} has no ImageNet weights (it trains from scratch); "
                            f"those that have: {', '.join(PRETRAINED)}")
            continue
        path = cache_path(file_name)
        if path.is_file():
            typer.echo(f"{arch}: {path} (already cached, {_mib(path)})")
            continue
        if online is None:
            online = _can_download()
        if not online:
            failures.append(f"{arch}: cannot download {file_name} (no connection to {WEIGHTS_HOST}); run "
                            f"`dfk weights fetch {arch}` on a machine with a network and copy the file to {path}")
            continue
        try:
            where = _download(arch, file_name, path)
        except Exception as exc:  # Keras' get_file raises a bare Exception for a failed fetch
            why = (str(exc) or type(exc).__name__).splitlines()[0]
            failures.append(f"{arch}: downloading {file_name} failed: {why}")
            continue
        typer.echo(f"{arch}: {where} (downloaded, {_mib(where)})")
    for message in failures:
        typer.echo(f"dfk: error: {message}", err=True)
    if failures:
        raise typer.Exit(2)


def _download(arch: str, file_name: str, path: Path) -> Path:
    """Build ``arch`` with ``weights="imagenet"``: Keras' application constructor (include_top=False)
    fetches the file with ``keras.utils.get_file`` and checks its hash, as training would."""
    from dfk.models import create_model

    create_model(arch, get_spec(arch).min_image_size, "imagenet")
    if path.is_file():
        return path
    # Keras falls back to /tmp/.keras when the cache folder cannot be written.
    fallback = Path("/tmp/.keras/models") / file_name
    if fallback.is_file():
        return fallback
    raise RuntimeError(f"Keras reported no error, but {file_name} is not in {path.parent}")


def _mib(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f} MiB"
