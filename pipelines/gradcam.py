"""MLproject entry point ``gradcam``: ``python -m pipelines.gradcam MODEL_URI IMAGES OUT [LAYER]``."""

import sys

from dfk.cli import app

if __name__ == "__main__":
    model_uri, images, out, *layer = sys.argv[1:]
    layer_args = ["--layer", layer[0]] if layer and layer[0] else []
    app(["gradcam", model_uri, images, "--out", out, *layer_args], prog_name="dfk")
