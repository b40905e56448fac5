"""Cost of batched Grad-CAM against one forward+backward pass of the same model and batch.

For each model, one process times (median of repeats, after a warm-up):
  gradcam   dfk.explain.gradcam.gradcam on a batch (heatmaps resized to the image, normalised)
  fwd+bwd   one forward pass and the gradient of the summed output w.r.t. the weights
  loop      Grad-CAM one image at a time, for contrast with batching
and reports gradcam / fwd+bwd (goal <= 1.5).

    .venv/bin/python -m bench.gradcam          # writes the gradcam section of docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(arch: str, size: int, batch: int, repeats: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from dfk.explain.gradcam import gradcam, gradient_function
    from dfk.models import create_model

    model, _ = create_model(arch, size, weights="none")
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    xt = tf.convert_to_tensor(x)
    fn = gradient_function(model)

    def fwd_bwd():
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(model(xt, training=False))
        return tape.gradient(y, model.trainable_weights)

    def loop():
        for i in range(batch):
            gradcam(model, x[i:i + 1], fn=fn)

    t_cam = _median_time(lambda: gradcam(model, x, fn=fn), repeats)
    t_ref = _median_time(fwd_bwd, repeats)
    t_loop = _median_time(loop, max(1, repeats // 2))
    return {"gradcam": t_cam, "fwd_bwd": t_ref, "loop": t_loop}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archs", default="cnn,resnet,efficientnet,vit")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from bench.report import write_section

    lines = [
        "## Grad-CAM (`python -m bench.gradcam`)",
        "",
        f"{args.size} px, batch {args.batch}, `weights=none`, median of {args.repeats} repeats after a warm-up.",
        "",
        "| model | Grad-CAM per image (ms) | fwd+bwd per image (ms) | Grad-CAM / fwd+bwd (goal <= 1.5) | one-at-a-time / batched |",
        "| --- | --- | --- | --- | --- |",
    ]
    for arch in args.archs.split(","):
        r = measure(arch, args.size, args.batch, args.repeats)
        print(arch, {k: round(v, 4) for k, v in r.items()}, flush=True)
        n = args.batch
        lines.append(f"| {arch} | {1000 * r['gradcam'] / n:.1f} | {1000 * r['fwd_bwd'] / n:.1f} | "
                     f"**{r['gradcam'] / r['fwd_bwd']:.2f}** | {r['loop'] / r['gradcam']:.1f} |")
    write_section("gradcam", "\n".join(lines))


if __name__ == "__main__":
    main()
