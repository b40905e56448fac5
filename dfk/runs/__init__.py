"""MLflow runs, from start to end, in one place. Each module builds only on those listed before it.

* :mod:`~dfk.runs.lifecycle`: the status a run ends with (:func:`~dfk.runs.lifecycle.end_status`),
  and the signals that stop a command as Ctrl-C does.
* :mod:`~dfk.runs.liveness`: heartbeats of the processes working on a run, runs orphaned by a killed
  process ended KILLED, the watch on the ``mlflow run`` that launched a command.
* :mod:`~dfk.runs.entry`: the run ``mlflow run`` opened for the entry point (``MLFLOW_RUN_ID``): read
  in one place, taken at most once, ended with the command.
* :mod:`~dfk.runs.tracking`: the tracking store, experiments, starting and ending runs, params,
  datasets.
* :mod:`~dfk.runs.steps`: pipeline steps as runs, a finished one reused.
"""
