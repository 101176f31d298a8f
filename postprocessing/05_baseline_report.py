"""Postprocessing 3: a run's Clotho evaluation text-to-audio scores beside the published DCASE 2023 baseline.

    python postprocessing/05_baseline_report.py --run runs/baseline [--split evaluation]

Reads RUN_DIR/eval/<split>_metrics.json (from 02_xmodal_retrieval.py) and prints mAP@10, R@1, R@5 and R@10,
with their 95% confidence intervals when the file holds them, next to the published 0.222 / 0.130 / 0.343 /
0.480. The logic lives in utils/evaluation/baseline_report.py.
"""

from __future__ import annotations

import argparse

from utils.cli import run
from utils.evaluation.baseline_report import report_for_run

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--run", required=True, metavar="RUN_DIR", help="the run directory to report")
parser.add_argument("--split", default="evaluation", help="the split's metrics to report (default: evaluation)")


def main(args: argparse.Namespace) -> None:
    print(report_for_run(args.run, args.split))


if __name__ == "__main__":
    run(main, parser)
