"""Postprocessing: score matrices of whole splits, their files, metrics, ranks and DCASE submissions.

Used by ``postprocessing/01_xmodal_scores.py`` (embed every clip and caption once, one matmul) and
``postprocessing/02_xmodal_retrieval.py`` (metrics via :mod:`utils.metrics`, submission CSV, rank plots).

Files, all under ``<run>/eval/`` and written atomically (temp file + ``os.replace``):

* ``<split>_xmodal_scores.hdf5``: ``scores`` float32 ``(n_captions, n_clips)``; ``text_ids`` (tids, row
  order of the split's caption table) and ``audio_ids`` (fids) as UTF-8 strings; attributes ``split``,
  ``checkpoint``, ``epoch``, ``run_dir``.
* ``<split>_metrics.json``: ``{"t2a": {"mAP@10", "R@1", "R@5", "R@10"}, "a2t": {...}}`` (paired splits).
* ``<split>.t2a_submission.csv``: DCASE format, ``caption,file_name_1,...,file_name_10``, one row per
  caption (its original ``raw_text``), clips' original file names, best first.
* ``<split>_ranks.csv`` (tid, fid, rank of the true clip) and ``<split>_ranks.png`` (paired splits).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from utils import paths
from utils.cli import run
from utils.config import Config
from utils.data_utils import LogmelStore, drop_skipped_clips, load_split
from utils.errors import DataError, PipelineError
from utils.inference import embed_audio, embed_text
from utils.metrics import t2a_ranks, xmodal_metrics
from utils.retrieval import TEXT_VECTOR_BATCH, LoadedRun, top_k, warn
from utils.tables import atomic_path, read_audio_table, read_text_table, write_rows

RERUN_SCORES = "re-run postprocessing/01_xmodal_scores.py"


# --------------------------------------------------------------------------------------------
# Paths and configuration
# --------------------------------------------------------------------------------------------


def eval_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "eval"


def scores_file(run_dir: str | os.PathLike, split: str) -> Path:
    return eval_dir(run_dir) / f"{split}_xmodal_scores.hdf5"


def metrics_file(run_dir: str | os.PathLike, split: str) -> Path:
    return eval_dir(run_dir) / f"{split}_metrics.json"


def submission_file(run_dir: str | os.PathLike, split: str) -> Path:
    return eval_dir(run_dir) / f"{split}.t2a_submission.csv"


def ranks_file(run_dir: str | os.PathLike, split: str) -> Path:
    return eval_dir(run_dir) / f"{split}_ranks.csv"


def ranks_plot_file(run_dir: str | os.PathLike, split: str) -> Path:
    return eval_dir(run_dir) / f"{split}_ranks.png"


def add_run_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--run RUN_DIR`` (default: ``run.dir/run.name`` of the config)."""
    parser.add_argument("--run", default=None, metavar="RUN_DIR",
                        help="run directory (default: run.dir/run.name of the config); given without --conf, "
                             "the config is RUN_DIR/config.yaml")
    return parser


def run_script(main: Callable[[argparse.Namespace, Config], object], parser: argparse.ArgumentParser,
               argv: list[str] | None = None) -> None:
    """:func:`utils.cli.run`, except that with ``--run`` and no ``--conf`` the config is the run's own
    ``config.yaml``, so ``--set`` overrides apply on top of the settings the run was trained with."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--conf", default=None)
    pre.add_argument("--run", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.conf is None and known.run and (Path(known.run) / "config.yaml").is_file():
        parser.set_defaults(conf=str(Path(known.run) / "config.yaml"))
    run(main, parser, argv)


def run_dir_of(args: argparse.Namespace, conf: Config) -> Path:
    return Path(args.run) if args.run else conf.run_dir


def eval_config(conf: Config, run_conf: Config) -> Config:
    """The run's config (model, features, text model) with ``data`` and ``eval`` from ``conf``
    (``--conf`` / ``--set``). Warns when ``conf`` names another text model or feature setting than the run."""
    if conf.text.model != run_conf.text.model:
        warn(f"the config's text.model '{conf.text.model}' differs from the run's '{run_conf.text.model}': the "
             "caption vectors must come from the model the run was trained with")
    if conf.features != run_conf.features:
        warn(f"the config's features {dataclasses.asdict(conf.features)} differ from the run's "
             f"{dataclasses.asdict(run_conf.features)}")
    return dataclasses.replace(run_conf, data=conf.data, eval=conf.eval)


def splits_to_score(conf: Config, requested: list[str] | None) -> list[str]:
    """``requested``, else ``data.eval_splits`` followed by ``data.query_splits``."""
    splits = list(requested) if requested else list(conf.data.eval_splits) + \
        [s for s in conf.data.query_splits if s not in conf.data.eval_splits]
    if not splits:
        raise PipelineError("no splits to score: set data.eval_splits / data.query_splits or pass --splits")
    return splits


def is_query_split(conf: Config, split: str, text_rows: list[dict]) -> bool:
    """An unpaired split (``data.query_splits``, or captions without clips): no ground truth."""
    return split in conf.data.query_splits or not any(r["fid"] for r in text_rows)


# --------------------------------------------------------------------------------------------
# Stage 01: score matrices
# --------------------------------------------------------------------------------------------


@dataclass
class SplitInputs:
    """Everything needed to score one split, aligned by index."""

    split: str
    text_rows: list[dict]  # caption table rows (tid, fid, fname, raw_text, text)
    fids: list[str]  # the clips (columns of the score matrix)
    store: LogmelStore  # their log-mels
    text_input: np.ndarray | list[str]  # (n_captions, D) SBERT vectors, or raw captions for a fine-tuned model
    query: bool  # True for an unpaired split


def load_split_inputs(conf: Config, split: str, text_kind: str = "embedding",
                      text_dim: int | None = None) -> SplitInputs:
    """Caption table, clips, features and caption vectors of ``split``; :class:`DataError` names the missing
    file and the stage that makes it.

    Paired splits use the clips that have captions (first-appearance order, as training's validation);
    query splits use every clip of the split's audio table.
    """
    need_embeds = text_kind == "embedding"
    rows = read_text_table(paths.text_table(conf, split))
    if not rows:
        raise DataError(f"{paths.text_table(conf, split)} has no captions; check stage 1's output for '{split}'")
    if is_query_split(conf, split, rows):
        audio_rows = read_audio_table(paths.audio_table(conf, split))
        if not audio_rows:
            raise DataError(f"{paths.audio_table(conf, split)} lists no clips; check stage 1's output for '{split}'")
        store = LogmelStore(paths.logmels(conf, split))
        audio_rows = drop_skipped_clips(conf, split, audio_rows, store)
        fids = [r["fid"] for r in audio_rows]
        missing = [f for f in fids if f not in store]
        if missing:
            raise DataError(f"{len(missing)} clip(s) of {paths.audio_table(conf, split)} have no features in "
                            f"{store.path} (e.g. fid {missing[0]}). Re-run preprocessing/02_audio_logmel.py.")
        text_input = None
        if need_embeds:
            from utils.sbert import load_text_embeddings

            text_input = load_text_embeddings(paths.text_embeds(conf), split, rows)  # (n_captions, D)
        query = True
    else:
        data = load_split(conf, split, need_embeds=need_embeds)
        rows, fids, store, text_input, query = data.text_rows, data.fids, data.features, data.text_embeds, False
    if need_embeds:
        check_embedding_model(conf)
        text_input = np.asarray(text_input, dtype=np.float32)
        if text_dim is not None and text_input.shape[1] != text_dim:
            raise DataError(
                f"the caption vectors of '{split}' in {paths.text_embeds(conf)} are {text_input.shape[1]}-d but the "
                f"run's text projection expects {text_dim}-d: they were made with another text.model. Re-run "
                f"preprocessing/03_sbert_embeddings.py with the run's text.model ('{conf.text.model}')"
            )
    else:
        text_input = [r["raw_text"] for r in rows]
    return SplitInputs(split, rows, fids, store, text_input, query)


def check_embedding_model(conf: Config) -> None:
    """Warn when the caption-vector file was made by another sentence-transformers model than ``text.model``."""
    from utils.sbert import embedding_model_name

    made_with = embedding_model_name(paths.text_embeds(conf))
    if Path(made_with).name != Path(conf.text.model).name:
        warn(f"{paths.text_embeds(conf)} was made with '{made_with}' but the run was trained on vectors of "
             f"'{conf.text.model}'; re-run preprocessing/03_sbert_embeddings.py with text.model={conf.text.model}")


@torch.no_grad()
def score_split(run: LoadedRun, inputs: SplitInputs, batch_size: int, text_batch_size: int | None = None,
                progress: bool = False) -> np.ndarray:
    """Embed every clip once (batched by length) and every caption once, then one matmul.

    Returns:
        ``(n_captions, n_clips)`` float32; row i = ``inputs.text_rows[i]``, column j = ``inputs.fids[j]``.
    """
    store, fids = inputs.store, inputs.fids
    audio = embed_audio(run.model, lambda k: store[fids[k]], [store.n_frames(f) for f in fids], batch_size,
                        run.device, run.dtype, progress=progress, desc=f"embed {inputs.split} clips")  # (n_clips, E)
    if isinstance(inputs.text_input, np.ndarray):
        text = embed_text(run.model, inputs.text_input, text_batch_size or TEXT_VECTOR_BATCH, run.device, run.dtype)
    else:
        text = embed_text(run.model, inputs.text_input, text_batch_size or 128, run.device, run.dtype)
    return run.model.score(audio, text).numpy().astype(np.float32, copy=False)  # (n_captions, n_clips)


def write_scores(path: str | os.PathLike, scores: np.ndarray, text_ids: list[str], audio_ids: list[str],
                 attrs: dict | None = None) -> Path:
    """Write a score file atomically: ``scores`` (n_captions, n_clips) float32, ``text_ids``, ``audio_ids``."""
    path = Path(path)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape != (len(text_ids), len(audio_ids)):
        raise ValueError(f"scores {scores.shape} do not match {len(text_ids)} text ids x {len(audio_ids)} audio ids")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    string = h5py.string_dtype("utf-8")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("scores", data=scores)
            f.create_dataset("text_ids", data=np.array(text_ids, dtype=object), dtype=string)
            f.create_dataset("audio_ids", data=np.array(audio_ids, dtype=object), dtype=string)
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


@dataclass
class ScoreFile:
    scores: np.ndarray  # (n_captions, n_clips) float32
    text_ids: list[str]
    audio_ids: list[str]
    attrs: dict
    path: Path


def read_scores(path: str | os.PathLike) -> ScoreFile:
    """Read a score file written by :func:`write_scores`; a missing or damaged file is a :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"score file not found: {path}. Run postprocessing/01_xmodal_scores.py first.")
    try:
        with h5py.File(path, "r") as f:
            out = ScoreFile(f["scores"][()], [s.decode() for s in f["text_ids"][()]],
                            [s.decode() for s in f["audio_ids"][()]], dict(f.attrs), path)
    except (OSError, KeyError) as err:
        raise DataError(f"{path} is not a readable score file ({err}); {RERUN_SCORES}") from err
    if out.scores.shape != (len(out.text_ids), len(out.audio_ids)):
        raise DataError(f"{path}: scores {out.scores.shape} do not match its ids; {RERUN_SCORES}")
    return out


# --------------------------------------------------------------------------------------------
# Stage 02: metrics, submission, ranks
# --------------------------------------------------------------------------------------------


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


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def plot_ranks(path: Path, ranks: np.ndarray, n_clips: int, split: str) -> Path:
    """Histogram of the true clip's rank on log-spaced bins, with the median in the title (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.unique(np.round(np.geomspace(1, n_clips + 1, num=min(40, n_clips + 1)))) - 0.5  # around integer ranks
    median = float(np.median(ranks))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(ranks, bins=edges, color="#4c72b0", edgecolor="white")
    ax.set_xscale("log")
    ax.axvline(median, color="#c44e52", linestyle="--", label=f"median {median:g}")
    ax.axvline(10.5, color="0.4", linestyle=":", label="top 10")
    ax.set_xlabel(f"rank of the true clip among {n_clips} (log scale)")
    ax.set_ylabel("captions")
    ax.set_title(f"{split}: text-to-audio rank of the true clip (median {median:g}, {len(ranks)} captions)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


@dataclass
class SplitReport:
    split: str
    submission: Path
    metrics: dict | None = None  # xmodal_metrics output, None for a query split
    ranks: np.ndarray | None = None


def evaluate_split(conf: Config, run_dir: Path, split: str) -> SplitReport:
    """Stage 02 for one split: submission CSV always; metrics JSON, ranks CSV and plot for paired splits."""
    sf = read_scores(scores_file(run_dir, split))
    rows, fnames, t2a = align(conf, split, sf)
    k = min(conf.eval.top_k, len(fnames))
    sub = write_rows(submission_file(run_dir, split),
                     submission_rows(sf.scores, [r["raw_text"] for r in rows], fnames, k), submission_columns(k))
    if t2a is None:
        return SplitReport(split, sub)
    metrics = xmodal_metrics(sf.scores, t2a)
    write_json(metrics_file(run_dir, split), metrics)
    ranks = t2a_ranks(sf.scores, t2a)
    write_rows(ranks_file(run_dir, split),
               ({"tid": r["tid"], "fid": r["fid"], "rank": int(rank)} for r, rank in zip(rows, ranks, strict=True)),
               ["tid", "fid", "rank"])
    plot_ranks(ranks_plot_file(run_dir, split), ranks, len(fnames), split)
    return SplitReport(split, sub, metrics, ranks)
