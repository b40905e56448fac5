"""MLproject entry point ``evaluate``: ``python -m pipelines.evaluate MODEL_URI DATA_DIR PERTURB``."""

import sys

from dfk.cli import app

if __name__ == "__main__":
    model_uri, data_dir, perturb = sys.argv[1:4]
    app(["evaluate", model_uri, "--data", data_dir, "--perturb", perturb], prog_name="dfk")
