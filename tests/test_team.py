"""A team's setup, for real: PostgreSQL, an ``mlflow server`` with proxied artifacts (also behind
basic-auth), clients in folders of their own that need nothing but URIs and credentials.

PostgreSQL comes from Debian's packages (``.ci/run`` installs it); without it these tests skip,
unless ``DFK_REQUIRE_POSTGRES=1`` makes that a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench.localserver import venv_tool
from bench.teamserver import mlflow_server, postgres, postgres_bin
from dfk.settings import SETTINGS
from tests.fakes import first_trials_together

# A hang guard, not a speed limit: on 2 shared cores one of these takes 3-6 minutes, past the
# suite's 600 s default when the machine is busy.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

TINY = ["--arch", "cnn", "-P", "epochs=1", "-P", "image_size=32", "-P", "batch_size=8", "-P", "weights=none",
        "-P", "gradcam_images=0"]
SPACE = "learning_rate: {type: float, low: 0.0001, high: 0.01, log: true}\ndense_units: {type: categorical, choices: [16, 32]}\n" \
        "batch_size: {type: categorical, choices: [8]}\naugment: null\n"


@pytest.fixture(scope="module")
def pg():
    if postgres_bin() is None:
        if os.environ.get("DFK_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is not installed and DFK_REQUIRE_POSTGRES is set")
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    with postgres() as server:
        yield server


def _client(server_uri: str, folder: Path, cache: Path, **extra: str) -> dict:
    """The environment of a team member's shell: the server's URI (and credentials), nothing local."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DFK_OPTUNA"))}
    env.update(MLFLOW_TRACKING_URI=server_uri, DFK_CACHE=str(cache), TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def _dfk(args, env, cwd, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([venv_tool("dfk"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    if check:
        assert r.returncode == 0, f"dfk {' '.join(args)}: {r.stderr[-3000:]}"
    return r


def _said(stderr: str) -> list[str]:
    """What dfk wrote to stderr, without TensorFlow's C++ start-up lines (absl logs those before
    TF_CPP_MIN_LOG_LEVEL applies)."""
    return [line for line in stderr.strip().splitlines()
            if not re.match(r"(WARNING: All log messages before absl|[IWE]\d{4} )", line)]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_team_trains_sweeps_registers_and_serves_through_one_server(pg, tiny_data, tmp_path):
    import mlflow
    import optuna

    from dfk.tuning.study import SURPLUS_ATTR

    optuna_url = pg.create_database("optuna")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    with mlflow_server(pg.create_database("mlflow"), tmp_path / "server") as server:
        alice, bob, carol = (tmp_path / name for name in ("alice", "bob", "carol"))
        env = {name: _client(server.uri, folder, tmp_path / "cache") for name, folder in
               (("alice", alice), ("bob", bob), ("carol", carol))}
        # One option instead of the environment works too.
        no_uri = {k: v for k, v in env["alice"].items() if k != "MLFLOW_TRACKING_URI"}
        _dfk(["--tracking-uri", server.uri, "train", "-d", str(tiny_data), *TINY], no_uri, alice)

        # Two machines (two folders, two processes) run the same command: one sweep of 4 trials. Each
        # holds its first trial until the other has one too: both work on the sweep even if one
        # starts much later (on a loaded machine the first could otherwise run all 4 alone).
        sweep = ["tune", "-d", str(tiny_data), *TINY, "-P", "epochs=2", "--n-trials", "4", "--study-name", "team",
                 "--space", str(space)]
        workers = [subprocess.Popen([venv_tool("dfk"), *sweep], cwd=folder, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True,
                                    env=first_trials_together({**env[n], "DFK_OPTUNA_STORAGE": optuna_url},
                                                              tmp_path / "first-trials"))
                   for n, folder in (("alice", alice), ("bob", bob))]
        outputs = [w.communicate(timeout=900)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0], outputs
        assert sum("joining the sweep in progress" in out for out in outputs) == 1, outputs

        _dfk(["register"], env["carol"], carol)
        _dfk(["train", "-d", str(tiny_data), *TINY, "--experiment", "carol"], env["carol"], carol)
        _dfk(["register", "--experiment", "carol"], env["carol"], carol)
        promoted = _dfk(["promote"], env["carol"], carol).stdout
        champion = "2" if promoted.startswith("promoted") else "1"  # the gate decides; either way it is recorded
        assert f"(version {champion})" in promoted

        # Another process, in yet another folder, loads the champion by name and scores image bytes.
        elsewhere = tmp_path / "dave"
        script = textwrap.dedent(f"""
            import mlflow, pandas as pd
            model = mlflow.pyfunc.load_model("{SETTINGS.champion_uri}")
            image = open({str(next((tiny_data / 'Test' / 'Fake').glob('*.jpg')))!r}, "rb").read()
            print(float(model.predict(pd.DataFrame({{"image": [image]}})).probability_fake[0]))
        """)
        loaded = subprocess.run([sys.executable, "-c", script], env=_client(server.uri, elsewhere, tmp_path / "cache"),
                                cwd=elsewhere, capture_output=True, text=True, timeout=300)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        assert 0.0 <= float(loaded.stdout.strip().splitlines()[-1]) <= 1.0

        mlflow.set_tracking_uri(server.uri)
        client = mlflow.MlflowClient()
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        assert runs and all(r.info.status == ("KILLED" if r.data.tags.get("optuna_state") == "PRUNED" else "FINISHED")
                            for r in runs)
        assert all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in runs)
        parents = [r for r in runs if r.data.tags.get("sweep") == "parent" and r.data.tags.get("optuna_study") == "team"]
        assert len(parents) == 1
        children = [r for r in runs if r.data.tags.get("optuna_study") == "team" and r.data.tags.get("optuna_trial")]
        assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
        study = optuna.load_study(study_name="team", storage=optuna_url)
        ran = [t for t in study.trials if not t.user_attrs.get(SURPLUS_ATTR)]
        assert len(ran) == 4 and {t.state.name for t in ran} <= {"COMPLETE", "PRUNED"}
        assert sorted(int(c.data.tags["optuna_trial"]) for c in children) == sorted(t.number for t in ran)
        assert len({tuple(sorted(t.params.items())) for t in ran}) == 4  # no two workers drew the same trial
        assert len({t.user_attrs["worker"] for t in ran}) == 2  # both machines worked on it
        assert study.user_attrs["mlflow_parent_run_id"] == parents[0].info.run_id
        trained = [r for r in runs if r.data.tags.get("arch") and not r.data.tags.get("optuna_study")]
        assert len(trained) == 2
        versions = client.search_model_versions(f"name = '{SETTINGS.model_name}'")
        assert len(versions) == 2
        assert client.get_model_version_by_alias(SETTINGS.model_name, SETTINGS.champion).version == champion
        assert client.get_model_version_by_alias(SETTINGS.model_name, SETTINGS.challenger).version == "2"
        # The server holds every artifact; the clients' folders hold nothing but what they were given.
        assert any(server.artifacts.rglob("MLmodel"))
        assert _files(alice) == _files(bob) == [] and _files(carol) == [] and _files(elsewhere) == []


def _status(url: str, auth: tuple[str, str] | None = None, body: bytes | None = None) -> int:
    import base64

    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_a_server_behind_basic_auth_lets_in_who_it_should(pg, tiny_data, tmp_path):
    import json

    import mlflow
    from mlflow.server import get_app_client

    with mlflow_server(pg.create_database("mlflow_auth"), tmp_path / "server", basic_auth=True) as server:
        search = f"{server.uri}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(search) == 401  # anonymous
        assert _status(search, server.admin) == 200
        os.environ.update(MLFLOW_TRACKING_USERNAME=server.admin[0], MLFLOW_TRACKING_PASSWORD=server.admin[1])
        try:
            users = get_app_client("basic-auth", tracking_uri=server.uri)
            users.create_user("alice", "alice-password-1")
            users.create_user("reader", "reader-password-1")
        finally:
            for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                os.environ.pop(var, None)

        alice = _client(server.uri, tmp_path / "alice", tmp_path / "cache", MLFLOW_TRACKING_USERNAME="alice",
                        MLFLOW_TRACKING_PASSWORD="alice-password-1")
        _dfk(["train", "-d", str(tiny_data), *TINY, "--experiment", "alice-exp"], alice, tmp_path / "alice")
        registered = _dfk(["register"], alice, tmp_path / "alice")
        assert "version 1" in registered.stdout
        scored = _dfk(["predict", SETTINGS.champion_uri, str(tiny_data / "Test"), "-o", str(tmp_path / "p.csv")],
                      alice, tmp_path / "alice")
        assert "wrote 12 predictions" in scored.stdout

        # A reader sees everything and changes nothing: no run in alice's experiment, no alias moved.
        reader = ("reader", "reader-password-1")
        mlflow.set_tracking_uri(server.uri)
        os.environ.update(MLFLOW_TRACKING_USERNAME=reader[0], MLFLOW_TRACKING_PASSWORD=reader[1])
        try:
            exp = mlflow.get_experiment_by_name("alice-exp")
            assert exp is not None
            client = mlflow.MlflowClient()
            with pytest.raises(mlflow.exceptions.MlflowException) as refused:
                client.create_run(exp.experiment_id)
            assert refused.value.get_http_status_code() == 403
            with pytest.raises(mlflow.exceptions.MlflowException) as refused:
                client.set_registered_model_alias(SETTINGS.model_name, "mine", "1")
            assert refused.value.get_http_status_code() == 403
        finally:
            for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                os.environ.pop(var, None)
        body = json.dumps({"experiment_id": exp.experiment_id}).encode()
        assert _status(f"{server.uri}/api/2.0/mlflow/runs/create", reader, body) == 403

        as_reader = {**alice, "MLFLOW_TRACKING_USERNAME": reader[0], "MLFLOW_TRACKING_PASSWORD": reader[1]}
        denied = _dfk(["train", "-d", str(tiny_data), *TINY, "--experiment", "alice-exp"], as_reader,
                      tmp_path / "alice", check=False)
        assert denied.returncode == 2 and "HTTP 403" in denied.stderr, denied.stderr[-2000:]
        assert _said(denied.stderr) == [
            "dfk: error: the tracking server says reader may not do that (HTTP 403): ask its admin for the permission"]

        wrong = {**alice, "MLFLOW_TRACKING_PASSWORD": "not-her-password"}
        for command in (["compare"], ["register"], ["train", "-d", str(tiny_data), *TINY]):
            r = _dfk(command, wrong, tmp_path / "alice", check=False)
            assert r.returncode == 2, (command, r.stderr[-2000:])
            assert _said(r.stderr) == [
                "dfk: error: the tracking server refused the credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME "
                "and MLFLOW_TRACKING_PASSWORD to a user of that server"], (command, r.stderr[-2000:])


def test_two_promotes_racing_on_the_team_server_leave_the_better_champion(pg, tmp_path):
    """Two `dfk promote` processes, one server: the promotion lock is a registered model created over
    HTTP, and whichever promote comes second judges against the champion the first one set."""
    import mlflow

    from tests.fakes import RACE_OUTCOMES, create_versions, race_two_promotes

    with mlflow_server(pg.create_database("mlflow_race"), tmp_path / "server") as server:
        client = mlflow.MlflowClient(server.uri)
        env = _client(server.uri, tmp_path / "team", tmp_path / "cache")
        for lead in ("2", "3"):
            name = f"m{lead}"
            create_versions(client, name, 3)
            client.set_registered_model_alias(name, "champion", "1")
            said = race_two_promotes(env, lead, tmp_path / "team", name)
            assert said in RACE_OUTCOMES.values(), (lead, said)  # whichever came first, the later judged against it
            assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
            assert client.get_model_version(name, "2").tags["promotion_decision"] == "promoted to champion"
        assert sorted(m.name for m in client.search_registered_models()) == ["m2", "m3"]  # no lock left behind
