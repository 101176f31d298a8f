"""The 95% bootstrap intervals of postprocessing 02 on a Clotho-sized evaluation split, against a plain loop.

    python benchmarks/bench_stats.py [--captions 5225] [--clips 1045] [--resamples 1000] [--repeats 3]

Ours: ``utils.evaluation.stats.xmodal_ci`` (each resample as query counts; one matrix product per direction).
Plain loop: what a script would write: for each resample, draw query indices and average each metric. Both on
the same per-query values of random scores (t2a: one value per caption, a2t: one per clip; 4 metrics each), with
the same seed; the best of ``--repeats`` runs is reported. Prints a Markdown table and writes JSON to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from machine import cpu_name, save_result  # benchmarks/machine.py (this folder is on sys.path as a script)

from utils.evaluation.metrics import xmodal_per_query
from utils.evaluation.stats import percentile_interval, xmodal_ci


def loop_ci(per_query: dict, resamples: int, seed: int) -> dict:
    out = {}
    for direction, values in per_query.items():
        n = len(next(iter(values.values())))
        rng = np.random.default_rng(seed)
        means = {m: np.empty(resamples) for m in values}
        for b in range(resamples):
            idx = rng.integers(0, n, size=n)
            for m, v in values.items():
                means[m][b] = v[idx].mean()
        out[direction] = {m: percentile_interval(means[m]).tolist() for m in values}
    return out


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=5225)
    parser.add_argument("--clips", type=int, default=1045)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(args.captions, args.clips)).astype(np.float32)
    per_query = xmodal_per_query(scores, np.arange(args.captions) * args.clips // args.captions)
    ours = best_of(lambda: xmodal_ci(per_query, args.resamples, 0), args.repeats)
    loop = best_of(lambda: loop_ci(per_query, args.resamples, 0), args.repeats)
    machine = f"{cpu_name()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    print(f"{args.captions} captions x {args.clips} clips, {args.resamples} resamples, 4 metrics per direction; "
          f"{machine}\n")
    print("| method | wall (s) | speed-up |\n|---|---:|---:|")
    print(f"| plain loop over resamples | {loop:.3f} | 1.0 |")
    print(f"| ours (`xmodal_ci`, counts @ values) | {ours:.3f} | {loop / ours:.1f} |")
    save_result("bench_stats", {"machine": machine, "captions": args.captions, "clips": args.clips,
                                "resamples": args.resamples, "ours_s": ours, "loop_s": loop})


if __name__ == "__main__":
    main()
