"""Postprocessing 2: retrieval metrics, DCASE submission files and rank plots from the score matrices.

    python postprocessing/02_xmodal_retrieval.py --conf conf.yaml --run runs/baseline [--splits evaluation ...]
    python postprocessing/02_xmodal_retrieval.py --conf conf.yaml --run 'runs/baseline-seed*'   # each run in turn

Reads RUN_DIR/eval/<split>_xmodal_scores.hdf5 (from 01_xmodal_scores.py) and the split's caption table, and
writes to RUN_DIR/eval/:
    <split>.t2a_submission.csv   DCASE 2023 format: caption,file_name_1,...,file_name_10 (best first)
    <split>.t2a_submission_top<k>.csv   the same with k = eval.top_k files (when k != 10)
    <split>_metrics.json         {"t2a": {mAP@10, R@1, R@5, R@10}, "a2t": {...}, "ci95": {"t2a": {"mAP@10": [lo, hi],
                                 ...}, "a2t": {...}}, "definitions": {...}} (ci95: percentile bootstrap over queries,
                                 eval.bootstrap_resamples / eval.bootstrap_seed; utils.evaluation.stats)
                                 (utils.evaluation.metrics; k from eval.map_k / eval.recall_ks; t2a from data.relevance if set)
    <split>_ranks.csv, .png      rank of each caption's true clip, and its histogram
Query splits (data.query_splits: no ground truth) get the submission only.
"""

from __future__ import annotations

import numpy as np

from utils.base.fileio import ensure_writable
from utils.cli import add_run_args, make_parser, run, run_dirs_of
from utils.evaluation.metrics import format_table
from utils.evaluation.retrieval import evaluate_split
from utils.evaluation.scoring import read_scores, splits_to_score
from utils.runs import eval_file, run_file


def chance_line(n_clips: int) -> str:
    """What random ranking would score, so the metrics above mean something."""
    return (f"chance (random ranking of {n_clips} clips): t2a R@1 = 1/{n_clips} = {1 / n_clips:.3f}, "
            f"R@10 = {min(1.0, 10 / n_clips):.3f}")


def main(args, conf) -> None:
    run_dirs = run_dirs_of(args, conf)
    for run_dir in run_dirs:
        ensure_writable(run_file(run_dir, "eval"), "evaluation results")  # before the work, not after it
    for run_dir in run_dirs:
        if len(run_dirs) > 1:
            print(f"run {run_dir}")
        evaluate_run(args, conf, run_dir)


def evaluate_run(args, conf, run_dir) -> None:
    """Stage 02 for every split of one run, printing its metrics."""
    for split in splits_to_score(conf, args.splits):
        report = evaluate_split(conf, run_dir, split)
        if report.metrics is None:
            print(f"[{split}] query split (no ground truth): wrote {report.submission}")
            continue
        if report.ranks is None:
            print(f"[{split}] query split with a relevance file:\n{format_table(report.metrics, report.ci95)}")
            continue
        median = float(np.median(report.ranks))
        print(f"[{split}] {len(report.ranks)} captions, median rank of the true clip {median:g}")
        print(format_table(report.metrics, report.ci95))
        print(chance_line(len(read_scores(eval_file(run_dir, split, "scores")).audio_ids)))
        print(f"wrote {report.submission} and {split}_metrics.json, {split}_ranks.csv/.png in {report.submission.parent}")


parser = make_parser(__doc__.splitlines()[0])
add_run_args(parser)
parser.add_argument("--splits", nargs="+", default=None,
                    help="splits to evaluate (default: data.eval_splits + data.query_splits)")

if __name__ == "__main__":
    run(main, parser)
