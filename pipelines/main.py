"""MLproject entry point ``main`` (plain ``mlflow run .``): the whole job, step by step."""

import sys

from dfk.cli import app

if __name__ == "__main__":
    data_dir, archs, image_size, epochs, perturb = sys.argv[1:6]
    app(["main", "--data-dir", data_dir, "--archs", archs, "--perturb", perturb,
         "-P", f"image_size={image_size}", "-P", f"epochs={epochs}"], prog_name="dfk")
