"""Postprocessing 4: one table of many runs (Markdown and CSV), to paste into a paper or a README.

    python postprocessing/04_results_table.py --conf conf.yaml runs/* [--split evaluation] [--reference runs/A]
                                              [--group-seeds] [--out runs/results_table]

One row per run (or, with --group-seeds, per group <name>-seed<k>: mean ± std over seeds): the split, t2a
mAP@k and R@k with their 95% intervals (from <run>/eval/<split>_metrics.json, written by 02_xmodal_retrieval.py),
epochs, training time, device, and "what differs": the config keys that differ from the reference run (default:
the first). Folders without a config.yaml (e.g. runs/compare) are left out; runs without metrics are skipped with
a warning. Prints the Markdown table and writes OUT.md and OUT.csv (default OUT: <run.dir>/results_table).
"""

from __future__ import annotations

from pathlib import Path

from utils.base.fileio import write_text_atomic
from utils.cli import expand_runs, make_parser, run
from utils.evaluation.results_table import results_table, to_csv, to_markdown


def main(args, conf) -> None:
    split = args.split or (conf.data.eval_splits[0] if conf.data.eval_splits else "evaluation")
    header, cells = results_table(expand_runs(args.runs), split, args.reference, args.group_seeds)
    markdown = to_markdown(header, cells)
    print(markdown, end="")
    out = Path(args.out) if args.out else Path(conf.run.dir) / "results_table"
    write_text_atomic(out.with_suffix(".md"), markdown)
    write_text_atomic(out.with_suffix(".csv"), to_csv(header, cells))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.csv')}")


parser = make_parser(__doc__.splitlines()[0])
parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (shell globs are fine)")
parser.add_argument("--split", default=None, help="split of the metrics (default: the first of data.eval_splits)")
parser.add_argument("--reference", default=None, metavar="RUN_DIR",
                    help="run whose config the 'what differs' column compares with (default: the first run)")
parser.add_argument("--group-seeds", action="store_true",
                    help="one row per group of runs named <name>-seed<k> (mean ± std over seeds)")
parser.add_argument("--out", default=None, help="output path without suffix (default: <run.dir>/results_table)")

if __name__ == "__main__":
    run(main, parser)
