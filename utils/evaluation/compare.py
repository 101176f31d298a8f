"""A paired comparison of two runs, or of two groups of seeds, on the same queries (``postprocessing/03_compare.py``).

    result = compare_runs(conf, [runs/A], [runs/B], "evaluation", resamples=1000, seed=0)   # compare.json's dict

Per query (caption for t2a, clip for a2t), the metric of B minus that of A. A group's per-query values are first
averaged over its runs (seeds). The difference of the means gets a 95% interval by a paired percentile bootstrap
over queries (:func:`utils.evaluation.stats.bootstrap_means` of the per-query differences) and a two-sided
p-value by a paired sign-flip randomization test (:func:`utils.evaluation.stats.sign_flip_p`). Runs scored on
other captions or clips are refused, naming them. :data:`SCHEMA` documents the JSON (and the README repeats it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.base.config import Config
from utils.base.errors import DataError
from utils.evaluation.retrieval import SplitQueries, split_queries
from utils.evaluation.scoring import ScoreFile, read_scores
from utils.evaluation.stats import bootstrap_means, percentile_interval, sign_flip_p
from utils.runs import eval_file

SCHEMA = """{"split": str, "a": {"name": str, "runs": [str]}, "b": {...},
 "n_queries": {"t2a": int, "a2t": int},
 "method": {"ci95": str, "p": str, "resamples": int, "seed": int},
 "metrics": {"t2a": {"mAP@10": {"a": float, "b": float, "diff": float, "ci95": [lo, hi], "p": float,
                                "a_seeds": [float], "b_seeds": [float], "a_std": float | null, "b_std": ...}, ...},
             "a2t": {...}}}"""
ALPHA = 0.05  # the significance level of the printed '*'


@dataclass
class Group:
    """One side of a comparison: its runs and their per-query values averaged over the runs."""

    name: str
    runs: list[Path]
    per_query: dict[str, dict[str, np.ndarray]]  # {direction: {metric: (n_queries,)}}, mean over runs
    per_run: dict[str, dict[str, list[float]]]  # {direction: {metric: [each run's mean over queries]}}
    queries: SplitQueries  # the first run's, for the ids


def group_name(runs: list[Path]) -> str:
    """A run's directory name; for several, their common prefix without a trailing ``-seed`` (``A-seed0``,
    ``A-seed1`` -> ``A``)."""
    names = [Path(r).name for r in runs]
    if len(names) == 1:
        return names[0]
    prefix = re.sub(r"[-_]?seed\d*$", "", os.path.commonprefix(names)).rstrip("-_")
    return prefix or "group"


def check_same_queries(ref: ScoreFile, ref_run: Path, other: ScoreFile, other_run: Path, split: str) -> None:
    """:class:`DataError` naming both runs and the first differing ids when they were scored on other captions
    or clips (or the same ones in another order)."""
    for what, a, b in (("captions", ref.text_ids, other.text_ids), ("clips", ref.audio_ids, other.audio_ids)):
        if a == b:
            continue
        only_ref, only_other = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        detail = (f"{len(only_ref)} only in {ref_run} (e.g. {only_ref[:2]}), {len(only_other)} only in {other_run} "
                  f"(e.g. {only_other[:2]})") if only_ref or only_other else "the same ones in another order"
        raise DataError(f"{ref_run} and {other_run} were scored on different {what} of '{split}': {detail}; score "
                        "both on the same data (postprocessing/01_xmodal_scores.py --conf CONF --run RUN) first")


def load_group(conf: Config, runs: list[Path], split: str, ref: tuple[ScoreFile, Path] | None = None) -> Group:
    """Every run's per-query values on ``split``, its score file checked against ``ref`` (or the group's first
    run's) before anything else."""
    loaded = []
    for run_dir in runs:
        sf = read_scores(eval_file(run_dir, split, "scores"))
        ref = ref or (sf, run_dir)
        check_same_queries(ref[0], ref[1], sf, run_dir, split)
        q = split_queries(conf, run_dir, split, sf)
        if q.per_query is None:
            raise DataError(f"'{split}' has no ground truth (a query split without data.relevance): nothing to compare")
        loaded.append(q)
    per_query = {d: {m: np.mean([q.per_query[d][m] for q in loaded], axis=0) for m in values}
                 for d, values in loaded[0].per_query.items()}
    per_run = {d: {m: [float(np.mean(q.per_query[d][m])) for q in loaded] for m in values}
               for d, values in loaded[0].per_query.items()}
    return Group(group_name(runs), list(runs), per_query, per_run, loaded[0])


def _std(values: list[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def compare_groups(a: Group, b: Group, split: str, resamples: int, seed: int) -> dict:
    """The ``compare.json`` dict (:data:`SCHEMA`) of B against A."""
    metrics, n_queries = {}, {}
    for direction, values in a.per_query.items():
        names = list(values)
        diffs = np.stack([b.per_query[direction][m] - values[m] for m in names], axis=1)  # (n_queries, n_metrics)
        lo, hi = percentile_interval(bootstrap_means(diffs, resamples, seed))
        p = np.atleast_1d(sign_flip_p(diffs, resamples, seed))
        n_queries[direction] = len(diffs)
        metrics[direction] = {m: {
            "a": float(values[m].mean()), "b": float(b.per_query[direction][m].mean()),
            "diff": float(diffs[:, i].mean()), "ci95": [float(lo[i]), float(hi[i])], "p": float(p[i]),
            "a_seeds": a.per_run[direction][m], "b_seeds": b.per_run[direction][m],
            "a_std": _std(a.per_run[direction][m]), "b_std": _std(b.per_run[direction][m]),
        } for i, m in enumerate(names)}
    return {
        "split": split,
        "a": {"name": a.name, "runs": [str(r) for r in a.runs]},
        "b": {"name": b.name, "runs": [str(r) for r in b.runs]},
        "n_queries": n_queries,
        "method": {
            "ci95": "paired percentile bootstrap over queries: resample the queries with replacement, the mean of "
                    "the per-query differences B - A in each resample, its 2.5th and 97.5th percentiles",
            "p": "two-sided paired sign-flip randomization test: flip the sign of each query's difference at "
                 "random; p = (1 + resamples with |mean| >= |observed mean|) / (1 + resamples)",
            "resamples": resamples, "seed": seed,
        },
        "metrics": metrics,
    }


def compare_runs(conf: Config, a_runs: list[Path], b_runs: list[Path], split: str, resamples: int,
                 seed: int) -> tuple[dict, Group, Group]:
    """Load both groups (refusing runs scored on other captions or clips) and compare them."""
    a = load_group(conf, a_runs, split)
    b = load_group(conf, b_runs, split, (a.queries.scores, a_runs[0]))
    return compare_groups(a, b, split, resamples, seed), a, b


def format_comparison(result: dict) -> str:
    """The printed table: per metric A, B, B - A, its 95% interval and p (``*`` when p < 0.05)."""
    m = result["method"]
    groups = any(len(result[s]["runs"]) > 1 for s in ("a", "b"))
    lines = [f"[{result['split']}] A = {result['a']['name']} ({len(result['a']['runs'])} run(s)), "
             f"B = {result['b']['name']} ({len(result['b']['runs'])} run(s)); queries: "
             + ", ".join(f"{d} {n}" for d, n in result["n_queries"].items()),
             f"95% CI: paired bootstrap over queries; p: paired sign-flip test; {m['resamples']} resamples, "
             f"seed {m['seed']}" + ("; sd: std of the runs' means over seeds" if groups else "")]
    header = f"{'':<5}{'metric':>8}{'A':>9}{'B':>9}{'B-A':>9}{'95% CI of B-A':>21}{'p':>8}"
    lines.append(header + (f"{'sd(A)':>8}{'sd(B)':>8}" if groups else ""))
    for direction, values in result["metrics"].items():
        for name, v in values.items():
            star = "*" if v["p"] < ALPHA and not v["ci95"][0] <= 0 <= v["ci95"][1] else " "
            ci = f"[{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]"
            line = (f"{direction:<5}{name:>8}{v['a']:>9.4f}{v['b']:>9.4f}{v['diff']:>+9.4f}{ci:>21}"
                    f"{v['p']:>8.4f}{star}")
            if groups:
                line += "".join(f"{'-' if s is None else f'{s:.4f}':>8}" for s in (v["a_std"], v["b_std"]))
            lines.append(line)
    lines.append(f"* p < {ALPHA} and the interval excludes 0")
    return "\n".join(lines)
