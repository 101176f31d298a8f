"""Postprocessing 2: retrieval metrics, DCASE submission files and rank plots from the score matrices.

    python postprocessing/02_xmodal_retrieval.py --conf conf.yaml --run runs/baseline [--splits evaluation ...]

Reads RUN_DIR/eval/<split>_xmodal_scores.hdf5 (from 01_xmodal_scores.py) and the split's caption table, and
writes to RUN_DIR/eval/:
    <split>.t2a_submission.csv   DCASE format: caption,file_name_1,...,file_name_10 (best first)
    <split>_metrics.json         {"t2a": {mAP@10, R@1, R@5, R@10}, "a2t": {...}} (utils.metrics)
    <split>_ranks.csv, .png      rank of each caption's true clip, and its histogram
Query splits (data.query_splits: no ground truth) get the submission only.
"""

from __future__ import annotations

import numpy as np

from utils.cli import add_run_args, make_parser, run, run_dir_of
from utils.evaluation import evaluate_split
from utils.metrics import format_table
from utils.scoring import splits_to_score


def main(args, conf) -> None:
    run_dir = run_dir_of(args, conf)
    for split in splits_to_score(conf, args.splits):
        report = evaluate_split(conf, run_dir, split)
        if report.metrics is None:
            print(f"[{split}] query split (no ground truth): wrote {report.submission}")
            continue
        median = float(np.median(report.ranks))
        print(f"[{split}] {len(report.ranks)} captions, median rank of the true clip {median:g}")
        print(format_table(report.metrics))
        print(f"wrote {report.submission} and {split}_metrics.json, {split}_ranks.csv/.png in {report.submission.parent}")


parser = make_parser(__doc__.splitlines()[0])
add_run_args(parser)
parser.add_argument("--splits", nargs="+", default=None,
                    help="splits to evaluate (default: data.eval_splits + data.query_splits)")

if __name__ == "__main__":
    run(main, parser)
