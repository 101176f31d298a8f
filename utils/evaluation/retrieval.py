"""Postprocessing stage 02: retrieval metrics, DCASE submission files and rank plots from the score matrices.

Used by ``postprocessing/02_xmodal_retrieval.py``. Files, all under ``<run>/eval/`` (paths from :mod:`utils.runs`)
and written atomically:

* ``<split>_metrics.json``: ``{"t2a": {"mAP@10", "R@1", "R@5", "R@10"}, "a2t": {...}, "ci95": {"t2a": {"mAP@10":
  [lo, hi], ...}, "a2t": {...}}, "definitions": {...}}`` (paired splits, or t2a only for a query split with a
  relevance file); k from ``eval.map_k`` and ``eval.recall_ks``; t2a uses the split's relevance file
  (``data.relevance``, :mod:`utils.data.relevance`) if any; ``ci95`` is the percentile bootstrap over queries of
  :mod:`utils.evaluation.stats` (``eval.bootstrap_resamples``, ``eval.bootstrap_seed``).
* ``<split>.t2a_submission.csv``: DCASE 2023 format, ``caption,file_name_1,...,file_name_10``, one row per
  caption (its original ``raw_text``), clips' original file names, best first; and
  ``<split>.t2a_submission_top<k>.csv``, the same with ``k = eval.top_k`` files, when that is not 10.
* ``<split>_ranks.csv`` (tid, fid, rank of the true clip) and ``<split>_ranks.png`` (paired splits).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils import runs
from utils.base import paths
from utils.base.config import Config
from utils.base.errors import DataError
from utils.base.fileio import write_text_atomic
from utils.base.plots import plot_ranks
from utils.base.tables import read_audio_table, read_text_table, write_rows
from utils.data.relevance import read_relevance, relevance_file
from utils.evaluation.metrics import (
    PAIRED,
    mean_over_queries,
    metric_definitions,
    require_finite,
    t2a_per_query,
    t2a_ranks,
    top_k,
    xmodal_per_query,
)
from utils.evaluation.scoring import RERUN_SCORES, ScoreFile, is_query_split, read_scores
from utils.evaluation.stats import ci_definition, xmodal_ci

DCASE2023_TOP_K = 10  # files per caption in the DCASE 2023 submission format


def align(conf: Config, split: str, sf: ScoreFile) -> tuple[list[dict], list[str], np.ndarray | None]:
    """Check a score file against the split's tables.

    Returns:
        ``(text_rows, fnames, text_to_audio)``: caption rows in score-row order, the original file name of
        each score column, and each caption's column (None for a query split).
    """
    table = paths.text_table(conf, split)
    rows = read_text_table(table)
    tids = [r["tid"] for r in rows]
    if tids != sf.text_ids:
        n_diff = sum(a != b for a, b in zip(tids, sf.text_ids, strict=False)) + abs(len(tids) - len(sf.text_ids))
        raise DataError(f"{sf.path} does not match {table} ({len(sf.text_ids)} vs {len(tids)} captions, {n_diff} "
                        f"differ): scores were made from another caption table; {RERUN_SCORES}")
    names = {}
    if paths.audio_table(conf, split).is_file():
        names = {r["fid"]: r["fname"] for r in read_audio_table(paths.audio_table(conf, split))}
    names.update({r["fid"]: r["fname"] for r in rows if r["fid"]})
    unknown = [f for f in sf.audio_ids if f not in names]
    if unknown:
        raise DataError(f"{sf.path} has {len(unknown)} clip(s) unknown to the tables of '{split}' (e.g. fid "
                        f"{unknown[0]}): scores were made from another caption table; {RERUN_SCORES}")
    fnames = [names[f] for f in sf.audio_ids]
    if is_query_split(conf, split, rows):
        return rows, fnames, None
    column = {fid: j for j, fid in enumerate(sf.audio_ids)}
    missing = [r["fid"] for r in rows if r["fid"] not in column]
    if missing:
        raise DataError(f"{sf.path} has no column for clip {missing[0]} of {table}: scores were made from another "
                        f"caption table; {RERUN_SCORES}")
    return rows, fnames, np.array([column[r["fid"]] for r in rows], dtype=np.int64)


def submission_rows(scores: np.ndarray, captions: list[str], fnames: list[str], k: int = 10) -> list[dict]:
    """DCASE t2a submission rows: ``{"caption": ..., "file_name_1": best, ...}``; ties keep the lower column."""
    best = top_k(scores, k)  # (n_captions, min(k, n_clips))
    return [{"caption": c, **{f"file_name_{i + 1}": fnames[j] for i, j in enumerate(row)}}
            for c, row in zip(captions, best, strict=True)]


def submission_columns(k: int) -> list[str]:
    return ["caption"] + [f"file_name_{i}" for i in range(1, k + 1)]


def submission_top_k_file(run_dir: str | os.PathLike, split: str, k: int) -> Path:
    return runs.run_file(run_dir, "eval") / f"{split}.t2a_submission_top{k}.csv"


def write_submission(path: Path, scores: np.ndarray, captions: list[str], fnames: list[str], k: int) -> Path:
    """A submission CSV of the ``min(k, n_clips)`` best clips per caption (:func:`submission_rows`)."""
    k = min(k, len(fnames))
    return write_rows(path, submission_rows(scores, captions, fnames, k), submission_columns(k))


def write_json(path: Path, data: dict) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


@dataclass
class SplitReport:
    split: str
    submission: Path
    metrics: dict | None = None  # xmodal_metrics output, None for a query split
    ranks: np.ndarray | None = None
    ci95: dict | None = None  # {direction: {metric: [lo, hi]}}, as metrics


@dataclass
class SplitQueries:
    """One split's per-query metric values (:func:`utils.evaluation.metrics.xmodal_per_query`) and what they
    were computed on."""

    per_query: dict[str, dict[str, np.ndarray]] | None  # {direction: {metric: (n_queries,)}}; None: no ground truth
    scores: ScoreFile
    rows: list[dict]  # caption rows, score-row order
    fnames: list[str]  # original file name of each score column
    text_to_audio: np.ndarray | None  # each caption's column; None for a query split
    definitions: dict[str, str]


def split_queries(conf: Config, run_dir: Path, split: str, sf: ScoreFile | None = None) -> SplitQueries:
    """Read ``<run>/eval/<split>_xmodal_scores.hdf5`` (unless ``sf`` is that file, read), check it against the
    split's tables and compute each query's metrics (t2a from the relevance file ``data.relevance`` names)."""
    sf = sf or read_scores(runs.eval_file(run_dir, split, "scores"))
    rows, fnames, t2a = align(conf, split, sf)
    require_finite(sf.scores, f"the scores of split '{split}' in {sf.path}", sf.text_ids, "caption", fnames, "clip")
    ev = conf.eval
    rel_path = relevance_file(conf, split)
    rel = None if rel_path is None else read_relevance(rel_path, [r["raw_text"] for r in rows], fnames)
    definitions = metric_definitions(ev.recall_ks, ev.map_k,
                                     PAIRED if rel is None else f"the clips with relevance > 0 in {rel_path}")
    definitions["ci95"] = ci_definition(ev.bootstrap_resamples, ev.bootstrap_seed)
    if t2a is not None:
        per_query = xmodal_per_query(sf.scores, t2a, ev.recall_ks, ev.map_k, rel)
    else:
        per_query = None if rel is None else {"t2a": t2a_per_query(sf.scores, rel, ev.recall_ks, ev.map_k)}
    return SplitQueries(per_query, sf, rows, fnames, t2a, definitions)


def evaluate_split(conf: Config, run_dir: Path, split: str) -> SplitReport:
    """Stage 02 for one split: the DCASE 2023 top-10 submission CSV always (and a top-``eval.top_k`` one when
    that is not 10); metrics JSON (with 95% intervals), ranks CSV and plot for paired splits; t2a metrics only
    for a query split with a relevance file (``data.relevance``)."""
    q = split_queries(conf, run_dir, split)
    sf, rows, fnames = q.scores, q.rows, q.fnames
    captions = [r["raw_text"] for r in rows]
    sub = write_submission(runs.eval_file(run_dir, split, "submission"), sf.scores, captions, fnames,
                           DCASE2023_TOP_K)
    if conf.eval.top_k != DCASE2023_TOP_K:  # else the top-k file would repeat the DCASE 2023 one
        write_submission(submission_top_k_file(run_dir, split, conf.eval.top_k), sf.scores, captions, fnames,
                         conf.eval.top_k)
    if q.per_query is None:
        return SplitReport(split, sub)
    metrics = mean_over_queries(q.per_query)
    ci95 = xmodal_ci(q.per_query, conf.eval.bootstrap_resamples, conf.eval.bootstrap_seed)
    write_json(runs.eval_file(run_dir, split, "metrics"), {**metrics, "ci95": ci95, "definitions": q.definitions})
    if q.text_to_audio is None:
        return SplitReport(split, sub, metrics, ci95=ci95)
    ranks = t2a_ranks(sf.scores, q.text_to_audio)
    write_rows(runs.eval_file(run_dir, split, "ranks"),
               ({"tid": r["tid"], "fid": r["fid"], "rank": int(rank)} for r, rank in zip(rows, ranks, strict=True)),
               ["tid", "fid", "rank"])
    plot_ranks(runs.eval_file(run_dir, split, "ranks_plot"), ranks, len(fnames), split)
    return SplitReport(split, sub, metrics, ranks, ci95)
