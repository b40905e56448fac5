"""dfk: a DeepFake-vs-Real image classifier delivered as an MLflow workflow.

Labels are 1 = fake, 0 = real everywhere. Heavy libraries (TensorFlow, MLflow) are imported
inside the functions that need them so that ``dfk --help`` answers fast.

Importing dfk quiets TensorFlow's C++ start-up lines (oneDNN, CUDA plug-in registration, CPU
features), so that they never precede dfk's own output or its one-line errors. ``dfk -v`` or
``DFK_VERBOSE=1`` brings them back; a ``TF_CPP_MIN_LOG_LEVEL`` the user set is kept.
"""

from __future__ import annotations

import os
import re
import sys

__version__ = "0.1.0"

LABELS = {0: "real", 1: "fake"}

#: Environment variable that keeps every line TensorFlow prints (what ``dfk -v`` sets).
VERBOSE_ENV = "DFK_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


# Set before TensorFlow is imported: its C++ logging reads the variable once, at load.
_SET_LOG_LEVEL = not verbose() and "TF_CPP_MIN_LOG_LEVEL" not in os.environ
if _SET_LOG_LEVEL:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # warnings and info hidden, errors shown


def set_verbose() -> None:
    """Show all of TensorFlow's start-up lines in this process and its children (``dfk -v``).

    Works only before TensorFlow is imported, which is why the CLI decides it in its callback.
    """
    os.environ[VERBOSE_ENV] = "1"
    if _SET_LOG_LEVEL and os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "2":
        del os.environ["TF_CPP_MIN_LOG_LEVEL"]


# TensorFlow 2.17+ writes part of its start-up through absl before absl::InitializeLog(), which
# ignores TF_CPP_MIN_LOG_LEVEL (tensorflow/tensorflow#100442): the oneDNN line, "Unable to register
# cuDNN factory" and the absl banner print at any level. Nothing in TensorFlow turns them off, so
# while the `tensorflow` package loads, its file descriptor 2 goes to a temporary file, and what
# TensorFlow's level would have hidden is dropped; every other line is written back unchanged.
_CPP_LOG = re.compile(
    r"^(?:(?P<absl>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\]"  # absl: I0000 00:00:1758131045.2 123 port.cc:153]
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<tsl>[IWEF]) \S+:\d+\])"  # tsl: 2025-09-17 14:44:05.1: E x.cc:467]
)
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# Errors every CUDA build logs at import (its plug-ins register twice); harmless, and hidden at level 2.
_HARMLESS_ERRORS = re.compile(r"Unable to register cu\w+ factory|computation placer already registered")


def _keep_line(line: str, level: int) -> bool:
    if line.strip() == _ABSL_BANNER:
        return level < 1
    m = _CPP_LOG.match(line)
    if not m:
        return True
    severity = "IWEF".index(m.group("absl") or m.group("tsl"))
    if severity == 3:  # fatal: always shown
        return True
    return severity >= level and not (level >= 2 and _HARMLESS_ERRORS.search(line))


def filter_startup_lines(text: str, level: int) -> str:
    """``text`` without the C++ log lines TensorFlow's ``TF_CPP_MIN_LOG_LEVEL`` = ``level`` hides."""
    return "".join(line for line in text.splitlines(keepends=True) if _keep_line(line, level))


class _QuietLoader:
    """Loads the ``tensorflow`` package with file descriptor 2 filtered (see above)."""

    def __init__(self, loader, level: int) -> None:
        self._loader, self._level = loader, level

    def __getattr__(self, name):  # get_source, get_filename, ...: the real loader's
        if name == "_loader":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        import tempfile

        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (AttributeError, OSError, ValueError):  # no stderr to filter
            return self._loader.exec_module(module)
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                self._loader.exec_module(module)
            finally:
                try:
                    sys.stderr.flush()
                except (AttributeError, OSError, ValueError):
                    pass
                os.dup2(saved, 2)
                os.close(saved)
                caught.seek(0)
                kept = filter_startup_lines(caught.read().decode(errors="replace"), self._level)
                if kept:
                    os.write(2, kept.encode())


class _QuietTensorFlow:
    """A meta-path finder that hands the first import of ``tensorflow`` to :class:`_QuietLoader`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or verbose():
            return None
        try:
            level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") or 0)
        except ValueError:
            return None
        if level < 1:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, level)
        return spec


if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietTensorFlow())
