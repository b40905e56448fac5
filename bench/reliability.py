"""Kills and resumes with real processes: how long a signalled run takes to end KILLED, how many
runs a SIGKILL leaves RUNNING after the next command, and what a killed-and-resumed run scores
against the same run uninterrupted.

    .venv/bin/python -m bench.reliability        # prints the figures (docs/BENCHMARKS.md)

The helpers that start, watch and signal a training process are also what
``tests/test_reliability.py`` uses.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: A training small enough to stop and resume in seconds (the tiny set's 32 px, no warm-up).
TINY = ("image_size=32", "batch_size=8", "warmup_epochs=0", "gradcam_images=0")
EXPERIMENT = "e"


def env(folder: Path) -> dict[str, str]:
    """This environment with ``folder``'s own SQLite store and no experiment chosen by the caller."""
    outer = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}
    return dict(outer, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", MLFLOW_TRACKING_URI=f"sqlite:///{folder}/mlflow.db",
                TF_CPP_MIN_LOG_LEVEL="3")


def pairs(params) -> list[str]:
    return [w for p in params for w in ("-P", p)]


def train_cmd(data: Path, epochs: int, *extra: str, params=TINY, arch: str = "cnn") -> list[str]:
    return [str(BIN / "dfk"), "train", "--arch", arch, "-d", str(data), *pairs((f"epochs={epochs}", f"patience={epochs}", *params)),
            "--experiment", EXPERIMENT, *extra]


def mlflow_run_cmd(data: Path, epochs: int, params=TINY) -> list[str]:
    return [str(BIN / "mlflow"), "run", str(ROOT), "-e", "cnn", "--env-manager", "local", "--experiment-name", EXPERIMENT,
            *pairs((f"data_dir={data}", f"epochs={epochs}", f"patience={epochs}", *params))]


def start(cmd: list[str], folder: Path) -> subprocess.Popen:
    """Start ``cmd`` on ``folder``'s store (created first, so no two processes create it at once)."""
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    mlflow.set_experiment(EXPERIMENT)
    proc = subprocess.Popen(cmd, env=env(folder), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=folder)
    proc.started_ms = int(time.time() * 1000)
    return proc


def wait_for_epochs(proc: subprocess.Popen, n: int, timeout: float = 600):
    """The training run ``proc`` started once it has ``n`` epochs logged."""
    client = mlflow.MlflowClient()
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read()[-3000:])
        exp = mlflow.get_experiment_by_name(EXPERIMENT)
        runs = [r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("arch") and r.info.start_time >= proc.started_ms - 1000] if exp else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= n:
            return runs[0]
        time.sleep(0.2)
    raise AssertionError("training did not reach its epochs in time")


def until_all_killed(grace: float = 15) -> tuple[dict[str, str], float]:
    """Run name -> status of the experiment's runs once all are KILLED (or ``grace`` s pass), and
    the seconds that took."""
    started = time.time()
    while True:
        runs = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")
        if all(r.info.status == "KILLED" for r in runs) or time.time() - started > grace:
            return {r.info.run_name: r.info.status for r in runs}, time.time() - started


def first_epoch(output: str) -> int:
    """The first epoch (1-based) a Keras log shows."""
    return min(int(m) for m in re.findall(r"^Epoch (\d+)/\d+$", output, re.M))


def kill_latency(data: Path, tmp: Path) -> list[tuple[str, float, str]]:
    """Seconds from the signal to every run KILLED, per launcher and signal."""
    out = []
    for launcher, signum in (("dfk train", signal.SIGTERM), ("dfk train", signal.SIGINT), ("mlflow run", signal.SIGTERM),
                             ("mlflow run", signal.SIGINT), ("mlflow run", signal.SIGKILL)):
        folder = tmp / f"{launcher.split()[0]}-{signum.name}"
        folder.mkdir()
        proc = start(train_cmd(data, 300) if launcher == "dfk train" else mlflow_run_cmd(data, 300), folder)
        wait_for_epochs(proc, 2)
        t = time.time()
        proc.send_signal(signum)
        statuses, _ = until_all_killed(60)
        out.append((f"{launcher}, {signum.name}", time.time() - t, ",".join(sorted(set(statuses.values())))))
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"{launcher} did not exit after {signum.name}: {proc.communicate()[0][-3000:]}") from None
    return out


def sigkill_then_next_command(data: Path, tmp: Path, runs: int = 3) -> tuple[int, int]:
    """RUNNING runs after ``runs`` SIGKILLed trainings, before and after one ``dfk compare``."""
    folder = tmp / "sigkill"
    folder.mkdir()
    for _ in range(runs):
        proc = start(train_cmd(data, 300), folder)
        wait_for_epochs(proc, 1)
        proc.kill()
        proc.wait()
    running = "attributes.status = 'RUNNING'"
    before = len(mlflow.search_runs(search_all_experiments=True, filter_string=running))
    subprocess.run([str(BIN / "dfk"), "compare"], env=env(folder), cwd=folder, capture_output=True)
    return before, len(mlflow.search_runs(search_all_experiments=True, filter_string=running))


def resumed_against_uninterrupted(tmp: Path, epochs: int = 6, kill_after: int = 3, arch: str = "srm") -> dict:
    """The built-in set, ``arch`` for ``epochs`` epochs: once straight through, once SIGKILLed after
    ``kill_after`` epochs and resumed. Test ROC-AUC of both, epochs redone."""
    from dfk.config import BUILTIN_DATA

    params = ("warmup_epochs=2", "gradcam_images=0")
    folder = tmp / "resume"
    folder.mkdir()
    straight = subprocess.run(train_cmd(BUILTIN_DATA, epochs, params=params, arch=arch), env=env(folder), cwd=folder,
                              capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    (full,) = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")
    proc = start(train_cmd(BUILTIN_DATA, epochs, params=params, arch=arch), folder)
    killed = wait_for_epochs(proc, kill_after)
    proc.kill()
    proc.wait()
    logged = len(mlflow.MlflowClient().get_metric_history(killed.info.run_id, "loss"))
    resumed = subprocess.run(train_cmd(BUILTIN_DATA, epochs, "--resume", killed.info.run_id, params=params, arch=arch),
                             env=env(folder), cwd=folder, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = mlflow.get_run(killed.info.run_id)
    return {"arch": arch, "epochs": epochs, "logged_before_kill": logged,
            "epochs_redone": logged - (first_epoch(resumed.stdout) - 1),
            "uninterrupted_test_roc_auc": full.data.metrics["test_roc_auc"],
            "resumed_test_roc_auc": after.data.metrics["test_roc_auc"], "resumed_status": after.info.status,
            "points_per_curve": len(mlflow.MlflowClient().get_metric_history(killed.info.run_id, "val_loss"))}


def main() -> None:
    import tempfile

    from bench.report import write_section
    from dfk.data.synth import SynthSpec, generate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = generate(SynthSpec(train=12, validation=6, test=6, image_size=64, seed=1), tmp / "tiny")
        latency = kill_latency(data, tmp)
        before, after = sigkill_then_next_command(data, tmp)
        resume = resumed_against_uninterrupted(tmp)
    lines = ["## Kills and resume (`python -m bench.reliability`)", "",
             "A `cnn` training on a tiny set (32 px) is signalled once it has logged 2 epochs; seconds from the signal "
             "until every run of the store is KILLED (the process handles the signal, or `mlflow run`'s command sees its "
             "launcher gone):", "", "| launcher, signal | seconds | runs end |", "| --- | --- | --- |"]
    lines += [f"| {what} | {seconds:.1f} | {status} |" for what, seconds, status in latency]
    lines += ["", f"Three trainings SIGKILLed one after another (each next `dfk train` already ends the one before "
                  f"KILLED as it starts): {before} run RUNNING before the next `dfk compare`, **{after}** after it.", "",
              f"Resume: `{resume['arch']}` on the built-in set for {resume['epochs']} epochs, SIGKILLed after "
              f"{resume['logged_before_kill']} logged epochs and resumed with `dfk train --resume`: epochs redone "
              f"**{resume['epochs_redone']}**, {resume['points_per_curve']} points per curve, run "
              f"{resume['resumed_status']}; test ROC-AUC {resume['resumed_test_roc_auc']:.4f} against "
              f"{resume['uninterrupted_test_roc_auc']:.4f} for the same run uninterrupted (the resumed run sees its "
              "remaining epochs' batches in another order, so the two differ as two seeds do)."]
    print("\n".join(lines))
    write_section("reliability", "\n".join(lines))


if __name__ == "__main__":
    main()
