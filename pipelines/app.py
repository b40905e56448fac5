"""MLproject entry point ``app``: ``python -m pipelines.app MODEL_URI PORT [MLFLOW_UI]``."""

import sys

from dfk.cli import app

if __name__ == "__main__":
    model_uri, port, *ui = sys.argv[1:]
    ui_args = ["--mlflow-ui", ui[0]] if ui and ui[0] else []
    app(["app", model_uri, "--port", str(int(float(port))), *ui_args], prog_name="dfk")
