"""MLproject entry point ``register``: ``python -m pipelines.register EXPERIMENT METRIC NAME``."""

import sys

from dfk.cli import app

if __name__ == "__main__":
    experiment, metric, name = sys.argv[1:4]
    app(["register", "--experiment", experiment, "--metric", metric, "--name", name], prog_name="dfk")
