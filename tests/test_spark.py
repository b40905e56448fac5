"""Batch scoring on Spark (local[2]): `dfk score-spark` gives `dfk predict`'s scores, and bad files
come back as per-row errors, not a failed job.

Needs PySpark (`pip install -e '.[spark]'`) and a Java runtime; runs with `-m spark` (make test-spark,
which .ci/run calls) and is skipped otherwise, so `make test` never starts a JVM.
"""

import importlib.util
import os
import shutil
import struct
import time

import pytest

import dfk.cli.spark  # noqa: F401  the command (dfk.cli registers it too)
from tests.test_native_resolution import SIZE, _encoded, _photo, native_model  # noqa: F401  (a fixture)

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module", autouse=True)
def spark_requested(request):
    if "spark" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("Spark tests run with -m spark (make test-spark)")
    missing = ("PySpark (pip install -e '.[spark]')" if importlib.util.find_spec("pyspark") is None else
               "a Java runtime (apt-get install -y default-jre-headless)"
               if shutil.which("java") is None and not os.environ.get("JAVA_HOME") else None)
    if missing:
        (pytest.fail if os.environ.get("DFK_REQUIRE_SPARK") else pytest.skip)(f"no {missing}")


@pytest.fixture(scope="module")
def spark():
    from dfk.serving.spark import session

    s = session("local[2]")
    yield s
    s.stop()


@pytest.fixture
def images(tiny_data, tmp_path):
    """The tiny set's test images, an upper-case extension, files that are not usable images and a
    file that is not an image by its name (left out)."""
    d = tmp_path / "incoming"
    shutil.copytree(tiny_data / "Test", d / "Test")
    first = sorted((d / "Test" / "Fake").glob("*.jpg"))[0]
    (d / "nested" / "deeper").mkdir(parents=True)
    shutil.copyfile(first, d / "nested" / "deeper" / "UPPER.JPG")
    bad = {
        "text.jpg": b"this is not an image",
        "empty.png": b"",
        "truncated.jpg": first.read_bytes()[:-400],
    }
    bomb = bytearray(first.read_bytes())  # a JPEG whose header claims 60000 x 60000 pixels
    at = bytes(bomb).index(b"\xff\xc0") + 5
    bomb[at:at + 4] = struct.pack(">HH", 60000, 60000)
    bad["bomb.jpg"] = bytes(bomb)
    for name, data in bad.items():
        (d / "nested" / name).write_bytes(data)
    (d / "notes.txt").write_text("not an image by its name")
    return d, set(bad)


def test_spark_scores_equal_dfk_predicts_and_bad_files_are_rows_with_errors(spark, champion, images, tmp_path,
                                                                              monkeypatch):
    import mlflow
    import pandas as pd
    from typer.testing import CliRunner

    from dfk.cli import app
    from dfk.evaluation.scoring import predict_files
    from dfk.serving.detector import load_detector
    from dfk.settings import SETTINGS

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion)
    mlflow.set_tracking_uri(champion)
    folder, bad = images
    out = tmp_path / "scores.parquet"
    t = time.perf_counter()
    result = CliRunner().invoke(app, ["score-spark", str(folder), "--out", str(out), "--master", "local[2]"])
    seconds = time.perf_counter() - t
    assert result.exit_code == 0, "".join(__import__("traceback").format_exception(result.exception)) if result.exception else result.output
    rows = pd.read_parquet(out).set_index("path")
    rows.index = [p.removeprefix("file:") for p in rows.index]
    good = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() == ".jpg" and p.name not in bad)
    # notes.txt left out by its name; empty.png by Spark, whose file sources skip empty files
    bad.discard("empty.png")
    expected_rows = set(good) | {str(folder / "nested" / n) for n in bad}
    assert (set(rows.index) - expected_rows, expected_rows - set(rows.index)) == (set(), set())
    assert len(rows) == len(expected_rows)

    errors = rows.loc[[str(folder / "nested" / n) for n in bad]]
    assert errors.probability_fake.isna().all() and errors.label.isna().all()
    reasons = dict(zip([os.path.basename(p) for p in errors.index], errors.error))
    assert "not an image" in reasons["text.jpg"]
    assert "truncated" in reasons["truncated.jpg"] or "cannot decode" in reasons["truncated.jpg"]
    assert "limit" in reasons["bomb.jpg"]

    scored = rows.loc[good]
    assert scored.error.isna().all()
    expected = {p: (prob, label) for p, prob, label in predict_files(load_detector(SETTINGS.champion_uri), good, 8)}
    assert max(abs(scored.probability_fake[p] - expected[p][0]) for p in good) < 1e-5
    assert all(scored.label[p] == expected[p][1] for p in good)
    assert f"Scored {len(good)} images ({len(bad)} unusable" in result.output
    print(f"\nspark: {len(rows)} files scored in {seconds:.1f} s (session already running)")


def test_a_native_resolution_model_scores_as_dfk_predict_and_the_pyfunc_do(spark, native_model, tmp_path):
    """A forensic model sees a picture larger than its input at its own resolution through Spark too, not
    the input-size copy a resizing model is handed."""
    import mlflow
    import pandas as pd
    from typer.testing import CliRunner

    from dfk.cli import app
    from dfk.data.decode import decode_image
    from dfk.evaluation.scoring import predict_files
    from dfk.serving.detector import load_detector

    folder = native_model[0]
    d = tmp_path / "pictures"
    d.mkdir()
    # whole at its size; capped at 1024 px (a JPEG decoded at a reduced scale); larger on one side only and
    # a small one (both resized, as for any model)
    for i, (w, h, fmt) in enumerate([(200, 150, "PNG"), (2300, 2100, "JPEG"), (300, 24, "PNG"), (20, 16, "JPEG")]):
        (d / f"{i}_{w}x{h}.{fmt.lower()}").write_bytes(_encoded(_photo(w, h, i), fmt))
    files = sorted(str(p) for p in d.iterdir())
    out = tmp_path / "scores.parquet"
    result = CliRunner().invoke(app, ["score-spark", str(d), "--model", str(folder), "--out", str(out),
                                      "--master", "local[2]"])
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(out)
    got = dict(zip((p.removeprefix("file:") for p in rows.path), rows.probability_fake))
    assert sorted(got) == files and rows.error.isna().all()

    detector = load_detector(str(folder))
    assert detector.native
    predicted = {p: prob for p, prob, _ in predict_files(detector, files, 8)}
    served = mlflow.pyfunc.load_model(str(folder)).predict(pd.DataFrame({"image": [open(p, "rb").read() for p in files]}))
    for p, s in zip(files, served.probability_fake):
        assert abs(got[p] - predicted[p]) < 1e-5 and abs(got[p] - s) < 1e-5, (p, got[p], predicted[p], s)
    whole = files[0]  # seen whole: its input-size copy scores otherwise
    resized = float(detector.score(decode_image(open(whole, "rb").read(), SIZE)[None])[0])
    assert abs(resized - got[whole]) > 1e-6


def test_glob_filter_matches_every_image_extension_in_any_case():
    from dfk.serving.spark import glob_filter

    pattern = glob_filter([".jpg", ".png"])
    assert pattern == "*.{[jJ][pP][gG],[pP][nN][gG]}"


def test_a_missing_folder_or_a_model_that_is_not_there_is_one_line(spark, champion, tmp_path, monkeypatch):
    import mlflow
    from typer.testing import CliRunner

    from dfk.cli import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion)
    mlflow.set_tracking_uri(champion)
    result = CliRunner().invoke(app, ["score-spark", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(app, ["score-spark", str(tmp_path), "--model", "models:/nothing@champion",
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "cannot load model" in result.output
