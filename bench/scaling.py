"""What a team's setup costs and gives, side by side in one run on this machine:

* metric-logging latency: the embedded SQLite store against an ``mlflow server`` (proxied
  artifacts) on SQLite and on PostgreSQL, one ``log_metric`` call and one epoch's ``log_batch``;
* sweep throughput: the same small sweep with 1 and 2 workers, on SQLite (``optuna.db`` beside
  ``mlflow.db``) and on PostgreSQL (Optuna storage and the tracking server's store).

    .venv/bin/python -m bench.scaling    # writes the scaling section of docs/BENCHMARKS.md

Needs PostgreSQL's server binaries (Debian: ``apt-get install postgresql``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def logging_latency(uri: str, calls: int) -> dict[str, float]:
    """Milliseconds per ``log_metric`` call and per ``log_batch`` of one epoch's metrics (median, p99)."""
    import mlflow
    import numpy as np

    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment(f"latency-{time.time_ns()}")
    run_id = client.create_run(exp).info.run_id
    single, batch = [], []
    epoch = [f"{p}{m}" for p in ("", "val_") for m in ("loss", "accuracy", "auc", "precision", "recall")]
    for step in range(calls):
        t = time.perf_counter()
        client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
        single.append(time.perf_counter() - t)
        t = time.perf_counter()
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, 0.5, now, step) for k in epoch])
        batch.append(time.perf_counter() - t)
    client.set_terminated(run_id)
    ms = lambda xs, q: float(np.percentile(np.array(xs) * 1000, q))  # noqa: E731
    return {"metric_p50": ms(single, 50), "metric_p99": ms(single, 99), "epoch_p50": ms(batch, 50),
            "epoch_p99": ms(batch, 99)}


def sweep(tracking_uri: str, storage: str, workers: int, trials: int, base, name: str) -> dict[str, float]:
    """Wall time of one sweep of ``trials`` trials; trials per hour."""
    import mlflow

    from dfk.tuning.study import SweepSpec

    from dfk.tuning.sweep import tune

    mlflow.set_tracking_uri(tracking_uri)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # the worker processes
    t = time.perf_counter()
    r = tune(SweepSpec(base=base, n_trials=trials, pruner="none", study_name=name, storage=storage,
                       workers=workers, experiment=f"bench-{name}"))
    secs = time.perf_counter() - t
    done = r.states.get("COMPLETE", 0)
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(r.states.items()))
    return {"seconds": secs, "trials": done, "per_hour": 3600 * done / secs, "states": states}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200, help="logging calls per store")
    parser.add_argument("--trials", type=int, default=6, help="trials per sweep")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()

    from bench.report import write_section
    from bench.teamserver import GUNICORN, UVICORN, mlflow_server, postgres
    from dfk.config import TrainConfig
    from dfk.data.synth import SynthSpec, generate

    latency, sweeps = {}, {}
    with tempfile.TemporaryDirectory() as tmp, postgres() as pg:
        tmp = Path(tmp)
        data = generate(SynthSpec(train=60, validation=20, test=10, image_size=args.size, seed=3), tmp / "data")
        base = TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(data), image_size=args.size, epochs=args.epochs,
                                               patience=args.epochs, batch_size=16, weights="none", gradcam_images=0))
        stores = {"embedded SQLite (sqlite:///mlflow.db)": f"sqlite:///{tmp}/mlflow.db"}
        servers = {  # label: backend, how it serves
            "server on SQLite, uvicorn, 2 workers": (f"sqlite:///{tmp}/server-sqlite.db", UVICORN),
            "server on PostgreSQL, uvicorn, 2 workers": (pg.create_database("mlflow_uvicorn"), UVICORN),
            "server on PostgreSQL, uvicorn, 1 worker": (pg.create_database("mlflow_one"), ("--workers", "1")),
            "server on PostgreSQL, gunicorn, 2 workers": (pg.create_database("mlflow"), GUNICORN),
        }
        with contextlib.ExitStack() as stack:
            for label, (backend, options) in servers.items():
                stores[label] = stack.enter_context(mlflow_server(backend, tmp / label.replace(" ", "_"),
                                                                  options=options)).uri
            for label, uri in stores.items():
                logging_latency(uri, 10)  # connections, tables, caches warm
                latency[label] = logging_latency(uri, args.calls)
                print(label, latency[label], flush=True)
            on_pg = stores["server on PostgreSQL, gunicorn, 2 workers"]
            setups = {"SQLite": (f"sqlite:///{tmp}/mlflow.db", f"sqlite:///{tmp}/optuna.db"),
                      "PostgreSQL": (on_pg, pg.create_database("optuna"))}
            for label, (uri, storage) in setups.items():
                for workers in (1, 2):
                    sweeps[(label, workers)] = sweep(uri, storage, workers, args.trials, base, f"{label}-{workers}")
                    print(label, workers, sweeps[(label, workers)], flush=True)

    ref = latency["embedded SQLite (sqlite:///mlflow.db)"]
    lines = [
        "## A team's setup: tracking server, PostgreSQL, sweep workers (`python -m bench.scaling`)",
        "",
        f"Logging latency, {args.calls} calls each, from one client on the same machine (127.0.0.1), after 10 warm-up "
        "calls. One epoch = one `log_batch` of the 10 per-epoch metrics training logs.",
        "",
        "| store | log_metric p50 (ms) | p99 (ms) | one epoch p50 (ms) | p99 (ms) | epoch p50 vs embedded |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in latency.items():
        lines.append(f"| {label} | {r['metric_p50']:.1f} | {r['metric_p99']:.1f} | {r['epoch_p50']:.1f} | "
                     f"{r['epoch_p99']:.1f} | {r['epoch_p50'] / ref['epoch_p50']:.2f}x |")
    lines += [
        "",
        f"Sweep throughput: `cnn` at {args.size} px, {args.trials} trials of {args.epochs} epochs on 60 images per "
        "class, no pruner; SQLite = `mlflow.db` + `optuna.db`, PostgreSQL = the tracking server above + an Optuna "
        "database on the same PostgreSQL (the server served by gunicorn). Workers are processes on this machine "
        "(`--workers`), all sharing its cores.",
        "",
        "| storage | workers | trial states | wall time (s) | completed trials per hour | vs 1 worker on SQLite |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    one = sweeps[("SQLite", 1)]["per_hour"]
    for (label, workers), r in sweeps.items():
        lines.append(f"| {label} | {workers} | {r['states']} | {r['seconds']:.0f} | {r['per_hour']:.0f} | "
                     f"{r['per_hour'] / one:.2f}x |")
    write_section("scaling", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
