"""MLproject entry point ``promote``: ``python -m pipelines.promote NAME DATA_DIR MARGIN``."""

import sys

from dfk.cli import app

if __name__ == "__main__":
    name, data_dir, margin = sys.argv[1:4]
    data_args = [] if data_dir == "builtin" else ["--data-dir", data_dir]
    app(["promote", "--name", name, "--margin", margin, *data_args], prog_name="dfk")
