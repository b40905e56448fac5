"""dfk: a DeepFake-vs-Real image classifier delivered as an MLflow workflow.

Labels are 1 = fake, 0 = real everywhere. Heavy libraries (TensorFlow, MLflow) are imported
inside the functions that need them so that ``dfk --help`` answers fast.
"""

__version__ = "0.1.0"

LABELS = {0: "real", 1: "fake"}
