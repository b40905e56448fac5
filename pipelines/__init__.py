"""The project's multi-step workflows. Each composes dfk's library into a short list of steps.

* :mod:`pipelines.main`: data -> train each architecture -> register -> promote -> robustness check;
* :mod:`pipelines.sweep`: an Optuna sweep -> register its best trial -> promote;
* :mod:`pipelines.generalization`: synthetic sets -> train -> score across manipulations and domains;
* :mod:`pipelines.prepare`: synthesise a set, cut face crops from videos and photos (split by source
  video), or take a folder -> inspect it.

Each step is an MLflow run under the pipeline's run, reused when one with the same inputs finished
(:mod:`dfk.runs.steps`); the steps themselves are in :mod:`pipelines.steps`.
"""

from __future__ import annotations
