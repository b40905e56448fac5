"""Many writers on one SQLite store: four ``dfk train`` processes and a two-worker ``dfk tune``
started at once on a fresh folder (one ``mlflow.db``, one ``optuna.db``), while a probe process
logs a metric every 20 ms and times each write.

    .venv/bin/python -m bench.concurrency            # prints the figures (docs/BENCHMARKS.md)

:func:`storm` is also what ``tests/test_concurrency.py`` runs, at a smaller size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
LOCKED = "database is locked"


@dataclass
class Storm:
    outputs: list[str]  # every process's stdout+stderr
    codes: list[int]
    latencies_ms: list[float]  # the probe's metric writes
    seconds: float

    @property
    def locked(self) -> int:
        return sum(out.count(LOCKED) for out in self.outputs)

    def p(self, q: float) -> float:
        import numpy as np

        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def probe(out: str, stop: str, every: float = 0.02) -> None:
    """Log one metric every ``every`` s to a run of its own until ``stop`` exists; write the latencies."""
    import mlflow

    from dfk.runs.tracking import ready_store

    ready_store()  # as every dfk command does first
    client = mlflow.MlflowClient()
    exp = mlflow.set_experiment("probe").experiment_id
    run_id = client.create_run(exp).info.run_id
    times = []
    step = 0
    while not os.path.exists(stop):
        t = time.perf_counter()
        client.log_metric(run_id, "probe", float(step), step=step)
        times.append((time.perf_counter() - t) * 1000)
        step += 1
        time.sleep(every)
    client.set_terminated(run_id)
    Path(out).write_text(json.dumps(times))


def storm(folder: Path, data: Path, trainers: int = 4, workers: int = 2, n_trials: int = 4,
          params: tuple[str, ...] = ()) -> Storm:
    """Start everything at once on ``folder``'s fresh store and wait for all of it."""
    from bench.reliability import env as store_env, pairs

    env = store_env(folder)
    overrides = pairs(params)
    commands = [[str(BIN / "dfk"), "train", "--arch", "cnn", "-d", str(data), "--experiment", "storm",
                 "-P", f"seed={i}", *overrides] for i in range(trainers)]
    commands.append([str(BIN / "dfk"), "tune", "--arch", "cnn", "-d", str(data), "--experiment", "storm-tune",
                     "--n-trials", str(n_trials), "--workers", str(workers), "--pruner", "none",
                     "--study-name", "storm", "--storage", f"sqlite:///{folder}/optuna.db", *overrides])
    stop, probe_out = folder / "stop", folder / "probe.json"
    started = time.time()
    procs = [subprocess.Popen(c, env=env, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in commands]
    prober = subprocess.Popen([sys.executable, "-m", "bench.concurrency", "--probe", str(probe_out), str(stop)],
                              env=dict(env, PYTHONPATH=str(Path(__file__).resolve().parents[1])), cwd=folder,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = [p.communicate(timeout=3600)[0] for p in procs]
    seconds = time.time() - started
    stop.touch()
    outputs.append(prober.communicate(timeout=120)[0])
    latencies = json.loads(probe_out.read_text()) if probe_out.exists() else []
    return Storm(outputs, [p.returncode for p in procs] + [prober.returncode], latencies, seconds)


def main() -> None:
    import tempfile

    from bench.report import write_section
    from dfk.data.synth import SynthSpec, generate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe", nargs=2, metavar=("OUT", "STOP"), help=argparse.SUPPRESS)
    ap.add_argument("--trials", type=int, default=6)
    args = ap.parse_args()
    if args.probe:
        probe(*args.probe)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = generate(SynthSpec(train=60, validation=20, test=20, image_size=64, seed=3), folder / "data")
        s = storm(folder, data, n_trials=args.trials, params=("epochs=4", "image_size=64", "gradcam_images=2"))
        import mlflow
        import optuna

        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        by_status: dict[str, int] = {}
        for r in runs:
            by_status[r.info.status] = by_status.get(r.info.status, 0) + 1
        trials = len(optuna.load_study(study_name="storm", storage=f"sqlite:///{folder}/optuna.db").get_trials(
            states=[optuna.trial.TrialState.COMPLETE]))
    lines = ["## Many writers on one SQLite store (`python -m bench.concurrency`)", "",
             f"Four `dfk train` (cnn, 64 px, 4 epochs) and a two-worker `dfk tune` ({args.trials} trials) start at once on a "
             "fresh folder (one `mlflow.db`, one `optuna.db`) while a probe logs a metric every 20 ms:", "",
             "| measure | value |", "| --- | --- |",
             f"| processes that failed | {sum(1 for c in s.codes if c)} of {len(s.codes)} |",
             f"| \"{LOCKED}\" in any output | {s.locked} |",
             f"| runs by status | {', '.join(f'{k} {v}' for k, v in sorted(by_status.items()))} |",
             f"| sweep trials complete | {trials} of {args.trials} |",
             f"| probe metric writes | {len(s.latencies_ms)} |",
             f"| metric-write latency p50 / p99 / max (ms) | {s.p(50):.1f} / **{s.p(99):.1f}** / {max(s.latencies_ms):.0f} |",
             f"| wall time (s) | {s.seconds:.0f} |"]
    print("\n".join(lines))
    write_section("concurrency", "\n".join(lines))


if __name__ == "__main__":
    main()
