"""MLproject entry point ``synth``: ``python -m pipelines.synth OUT`` writes the built-in set."""

import sys

from dfk.cli import app

if __name__ == "__main__":
    app(["data", "synth", *sys.argv[1:]], prog_name="dfk")
