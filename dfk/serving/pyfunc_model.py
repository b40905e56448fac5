"""The file MLflow logs as the model's code ("models from code", no pickling of Python objects)."""

from mlflow.models import set_model

from dfk.serving.detector import DeepfakeDetector

set_model(DeepfakeDetector())
