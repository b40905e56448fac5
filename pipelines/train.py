"""MLproject entry point of every architecture: ``python -m pipelines.train ARCH key=value ...``."""

import sys

from dfk.cli import app

if __name__ == "__main__":
    arch, pairs = sys.argv[1], sys.argv[2:]
    app(["train", "--arch", arch, *[arg for pair in pairs for arg in ("-P", pair)]], prog_name="dfk")
