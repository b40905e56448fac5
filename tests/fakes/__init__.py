"""Test doubles and rendezvous for processes the tests start.

* Registered versions whose scoring is instant: version -> ROC-AUC, for the promotion tests.
  Promotion scores two versions (minutes with real models); what the gate and the promotion lock
  do with the scores is the same with made-up ones. :func:`scoring_patches` lists what to replace,
  for a test's ``monkeypatch``; :func:`process_env` has a ``dfk promote`` process install the same.
* :func:`first_trials_together`: sweep workers that each hold their first trial until every one
  has one, so that "two machines work on one sweep" does not depend on how fast each starts.

A process gets them through :mod:`tests.fakes.sitecustomize` (this folder on ``PYTHONPATH``),
which installs what its environment asks for and nothing else.
"""

from __future__ import annotations

import json
import os
import random
import time
import types
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def scoring_patches(quality: dict[str, float], pause: Callable[[], None] = lambda: None,
                    first_score: Callable[[], None] = lambda: None) -> list[tuple[object, str, object]]:
    """``(module, name, value)`` to set: scoring gives version ``v`` the ROC-AUC ``quality[v]`` at once;
    ``pause`` runs before every score and every alias read (so that two promotes interleave),
    ``first_score`` before a process's first score (after it has read the champion it judges against)."""
    from dfk.evaluation import scoring
    from dfk.registry import promotion
    from dfk.serving import detector

    spec = types.SimpleNamespace(data_dir="d", val_split=0.2, seed=1)
    scored = []

    def score(version, index, *a, **k):
        if not scored:
            scored.append(version)
            first_score()
        pause()
        auc = quality[version]
        return types.SimpleNamespace(clean=types.SimpleNamespace(metrics={"roc_auc": auc, "log_loss": 1 - auc,
                                                                          "accuracy": auc, "eer": 1 - auc}))

    real_alias = promotion._alias_version

    def slow_alias(*a):
        pause()
        return real_alias(*a)

    return [
        (scoring, "scoring_data", lambda uri, data_dir: (types.SimpleNamespace(spec=spec, fingerprint="f"), "d")),
        (scoring, "model_data", lambda uri: None),
        (detector, "load_detector", lambda uri: uri.rsplit("/", 1)[-1]),
        (scoring, "score_folder", score),
        (promotion, "_alias_version", slow_alias),
    ]


def create_versions(client, name: str, n: int) -> None:
    """Registered model ``name`` with versions 1..n of one finished run's (absent) model: the fakes
    never load them. A run's artifact URI, not a local path, so that a tracking server takes it too."""
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    for _ in range(n):
        client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)


def _with_fakes(env: dict, **variables: str) -> dict:
    return dict(env, **variables, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), str(ROOT), env.get("PYTHONPATH")])))


def _rendezvous(folder: Path, parties: int, wait: float = 120) -> None:
    """Arrive at ``folder`` and wait until ``parties`` processes have (or ``wait`` s pass: a hang guard)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + wait
    while len(list(folder.iterdir())) < parties and time.monotonic() < deadline:
        time.sleep(0.02)


def process_env(env: dict, quality: dict[str, float], barrier: Path | None = None, parties: int = 2,
                delay: float = 0.0, seed: int | None = None) -> dict:
    """``env`` for a process whose promote scores as :func:`scoring_patches` does: every process
    given the same ``barrier`` folder waits at its first score until ``parties`` have arrived (so all
    have read the same champion), then sleeps ``delay`` s; ``seed`` adds random pauses."""
    out = _with_fakes(env, DFK_FAKE_QUALITY=json.dumps(quality), DFK_FAKE_PARTIES=str(parties),
                      DFK_FAKE_DELAY=str(delay))
    if barrier is not None:
        out["DFK_FAKE_BARRIER"] = str(barrier)
    if seed is not None:
        out["DFK_FAKE_SEED"] = str(seed)
    return out


def first_trials_together(env: dict, folder: Path, parties: int = 2) -> dict:
    """``env`` for sweep workers that each hold their first trial, once Optuna has given it to them
    (before it runs or beats), until ``parties`` workers have one: then every worker has worked on
    the sweep, however much later than the others it started."""
    return _with_fakes(env, DFK_FIRST_TRIALS=str(folder), DFK_FIRST_TRIALS_PARTIES=str(parties))


def install_first_trial_rendezvous() -> None:
    import optuna

    ask, asked = optuna.study.Study.ask, []

    def first_together(self, *a, **k):
        trial = ask(self, *a, **k)
        if not asked:
            asked.append(trial.number)
            _rendezvous(Path(os.environ["DFK_FIRST_TRIALS"]), int(os.environ["DFK_FIRST_TRIALS_PARTIES"]))
        return trial

    optuna.study.Study.ask = first_together


def install_from_environment() -> None:
    """Install the fakes :func:`process_env` describes into this process."""
    quality = json.loads(os.environ["DFK_FAKE_QUALITY"])
    seed = os.environ.get("DFK_FAKE_SEED")
    rng = random.Random(f"{seed}-{os.getpid()}") if seed else None
    pause = (lambda: time.sleep(rng.random() * 0.05)) if rng else (lambda: None)

    def first_score():
        if os.environ.get("DFK_FAKE_BARRIER"):
            _rendezvous(Path(os.environ["DFK_FAKE_BARRIER"]), int(os.environ["DFK_FAKE_PARTIES"]))
        time.sleep(float(os.environ.get("DFK_FAKE_DELAY", "0")))

    for module, name, value in scoring_patches(quality, pause, first_score):
        setattr(module, name, value)


#: What each of two racing promotes of v2 (ROC-AUC 0.95) and v3 (0.90) over v1 (0.80) says, by which
#: one moved the champion first: the other judged again against the new champion.
RACE_OUTCOMES = {
    "2": {"2": "promoted: challenger v2 roc_auc 0.9500 vs champion v1 0.8000: +0.1500 >= margin 0.01",
          "3": "not promoted: challenger v3 roc_auc 0.9000 vs champion v2 0.9500: -0.0500 < margin 0.01"},
    "3": {"3": "promoted: challenger v3 roc_auc 0.9000 vs champion v1 0.8000: +0.1000 >= margin 0.01",
          "2": "promoted: challenger v2 roc_auc 0.9500 vs champion v3 0.9000: +0.0500 >= margin 0.01"},
}


def race_two_promotes(env: dict, lead: str, folder: Path, name: str = "m") -> dict[str, str]:
    """Run ``python -m dfk promote --name NAME --version 2`` and ``--version 3`` at once, as two processes
    with ``env`` (its MLFLOW_TRACKING_URI the store of model ``name``, champion v1) that both read champion
    v1 before either takes the promotion lock; ``lead`` goes on at once, the other a second later.
    What each printed first, by version."""
    import subprocess
    import sys

    quality = {"1": 0.80, "2": 0.95, "3": 0.90}
    procs = {v: subprocess.Popen([sys.executable, "-m", "dfk", "promote", "--name", name, "--version", v,
                                  "--margin", "0.01"],
                                 env=process_env(env, quality, folder / f"barrier-{name}",
                                                 delay=0.0 if v == lead else 1.0),
                                 cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for v in ("2", "3")}
    said = {}
    for v, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (v, err[-3000:])
        said[v] = out.splitlines()[0]
    return said
