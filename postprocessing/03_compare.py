"""Postprocessing 3: is run B better than run A? A paired comparison over the same queries.

    python postprocessing/03_compare.py --conf conf.yaml --run runs/A --run runs/B [--split evaluation] [--out DIR]
    python postprocessing/03_compare.py --conf conf.yaml --run 'runs/A-seed*' --run 'runs/B-seed*'   # seed groups

Reads each run's RUN_DIR/eval/<split>_xmodal_scores.hdf5 (from 01_xmodal_scores.py). For every metric (t2a and
a2t mAP@k and R@k; t2a from data.relevance when set) it prints A, B, B - A, a 95% interval of B - A (paired
bootstrap over queries) and a p-value (paired sign-flip randomization test), with eval.bootstrap_resamples and
eval.bootstrap_seed. A glob names a group of runs (seeds): per-query values are averaged over the group first,
and the table adds each group's standard deviation over seeds. Writes DIR/compare.json (schema:
utils.evaluation.compare.SCHEMA, README "Did my change help?") and DIR/compare.png (per-query t2a AP of A against
B, and the histogram of the differences); DIR defaults to <run.dir>/compare/<A>_vs_<B>/.
"""

from __future__ import annotations

from pathlib import Path

from utils.base.errors import PipelineError
from utils.base.plots import plot_comparison
from utils.cli import add_run_args, expand_runs, make_parser, run
from utils.evaluation.compare import compare_runs, format_comparison
from utils.evaluation.retrieval import write_json


def main(args, conf) -> None:
    if not args.run or len(args.run) != 2:
        raise PipelineError("03_compare.py compares two runs or groups: pass --run A --run B (a quoted glob such "
                            "as 'runs/A-seed*' names a group of seeds)")
    a_runs, b_runs = expand_runs([args.run[0]]), expand_runs([args.run[1]])
    split = args.split or (conf.data.eval_splits[0] if conf.data.eval_splits else None)
    if split is None:
        raise PipelineError("no split to compare: pass --split or set data.eval_splits")
    ev = conf.eval
    result, a, b = compare_runs(conf, a_runs, b_runs, split, ev.bootstrap_resamples, ev.bootstrap_seed)
    out = Path(args.out) if args.out else Path(conf.run.dir) / "compare" / f"{a.name}_vs_{b.name}"
    print(format_comparison(result))
    metric = f"mAP@{ev.map_k}"
    write_json(out / "compare.json", result)
    plot_comparison(out / "compare.png", a.per_query["t2a"][metric], b.per_query["t2a"][metric], (a.name, b.name),
                    f"t2a AP@{ev.map_k}", split)
    print(f"wrote {out / 'compare.json'} and compare.png")


parser = make_parser(__doc__.splitlines()[0])
add_run_args(parser)
parser.add_argument("--split", default=None, help="split to compare on (default: the first of data.eval_splits)")
parser.add_argument("--out", default=None, help="output folder (default: <run.dir>/compare/<A>_vs_<B>/)")

if __name__ == "__main__":
    run(main, parser)
