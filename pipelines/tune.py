"""MLproject entry point ``tune``: positional MLproject parameters -> ``dfk tune`` options."""

import sys

from dfk.cli import app

if __name__ == "__main__":
    arch, data_dir, n_trials, objective, pruner, workers, epochs, image_size, *optional = sys.argv[1:]
    args = ["tune", "--arch", arch, "--data-dir", data_dir, "--n-trials", str(int(float(n_trials))),
            "--objective", objective, "--pruner", pruner, "--workers", str(int(float(workers))),
            "-P", f"epochs={epochs}", "-P", f"image_size={image_size}"]
    for flag, value in zip(("--study-name", "--storage", "--space"), optional + [""] * 3):
        if value:
            args += [flag, value]
    app(args, prog_name="dfk")
