"""Benchmark: what the exact embedding protocol costs against the old zero-padded batches (issue #16 part 1).

    python benchmarks/bench_exact_embedding.py [--device cpu] [--clips 32] [--width 0.125] [--repeats 3]

Three sides, each calling ``utils.evaluation.embedding.embed_audio`` on the same Clotho-length clips (log-mels of
750-1500 frames x 64, at evenly spaced length quantiles), timed in turn (``bench_scores.timed_round_robin``):

- padded: length-sorted batches of ``--batch-size``, the padded frames entering CNN14's pooling (``exact=False``,
  the protocol before issue #16);
- exact: the same batches, each clip's padding masked (the default now: every clip gets its vector alone);
- one clip at a time: batch size 1 (the baseline's loop).

Also reports how far each side's vectors are from the one-clip-at-a-time vectors (max |difference|).
Prints a markdown table and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from bench_scores import build_model, clotho_like_subset, timed_round_robin  # this folder is on sys.path
from machine import cpu_name, save_result

from utils.base.devices import resolve_device
from utils.evaluation.embedding import embed_audio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--clips", type=int, default=32, help="clips timed (evenly spaced length quantiles)")
    p.add_argument("--width", type=float, default=0.125, help="CNN14 channel multiplier")
    p.add_argument("--batch-size", type=int, default=64, help="eval.batch_size of the batched sides")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    lengths = rng.integers(750, 1501, size=1045)  # frames of 15-30 s clips at a 20 ms hop
    chosen = clotho_like_subset(lengths, args.clips)
    feats = [rng.normal(size=(int(lengths[k]), 64)).astype(np.float32) for k in chosen]  # (T, 64) each
    model = build_model(args.width, 768, 300, device)
    n = [f.shape[0] for f in feats]

    def side(batch: int, exact: bool):
        return lambda: embed_audio(model, lambda k: feats[k], n, batch, device, exact=exact)

    sides = {"padded": side(args.batch_size, False), "exact": side(args.batch_size, True), "alone": side(1, True)}
    times = timed_round_robin(sides, device, repeats=args.repeats)
    ref = sides["alone"]()
    diff = {name: float((sides[name]() - ref).abs().max()) for name in ("padded", "exact")}
    report = {"machine": cpu_name(), "device": str(device), "torch_threads": torch.get_num_threads(),
              "load_average": os.getloadavg(), "args": vars(args), "seconds": times, "max_abs_diff_vs_alone": diff}
    print(f"machine: {report['machine']}, {device}, {report['torch_threads']} torch threads, "
          f"load {report['load_average'][0]:.1f}; {len(feats)} clips of {min(n)}-{max(n)} frames, width {args.width}")
    print("| side | seconds | vs padded | max abs diff vs alone |\n|---|---:|---:|---:|")
    for name, label in (("padded", "padded batches (before)"), ("exact", "exact, masked batches (now)"),
                        ("alone", "one clip at a time (baseline)")):
        d = f"{diff[name]:.1e}" if name in diff else "0"
        print(f"| {label} | {times[name]:.2f} | {times[name] / times['padded']:.2f}x | {d} |")
    save_result("bench_exact_embedding", report)


if __name__ == "__main__":
    main()
