"""Postprocessing stage 01: text-to-audio score matrices of whole splits, and their files.

Used by ``postprocessing/01_xmodal_scores.py``: every clip and every caption of a split is embedded once, and the
scores are one matrix product. The file, ``<run>/eval/<split>_xmodal_scores.hdf5`` (:func:`utils.runs.eval_file`),
written atomically: ``scores`` float32 ``(n_captions, n_clips)``; ``text_ids`` (tids, row order of the split's
caption table) and ``audio_ids`` (fids) as UTF-8 strings; attributes ``split``, ``checkpoint``, ``epoch``,
``run_dir``. Stage 02 (metrics, submissions, ranks) is :mod:`utils.evaluation.retrieval`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from utils.base import paths
from utils.base.config import Config
from utils.base.errors import DataError, PipelineError, warn
from utils.base.fileio import atomic_write
from utils.base.tables import read_audio_table
from utils.data.caption_vectors import load_text_embeddings
from utils.data.datasets import LogmelStore, load_split, open_features, read_captions
from utils.evaluation.embedding import TEXT_VECTOR_BATCH, embed_audio, embed_text
from utils.evaluation.metrics import require_finite
from utils.runs import LoadedRun
from utils.text.fingerprint import check_vector_provenance

RERUN_SCORES = "re-run postprocessing/01_xmodal_scores.py"


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
    rows = read_captions(conf, split)
    if is_query_split(conf, split, rows):
        audio_rows = read_audio_table(paths.audio_table(conf, split))
        if not audio_rows:
            raise DataError(f"{paths.audio_table(conf, split)} lists no clips; check stage 1's output for '{split}'")
        store, audio_rows = open_features(conf, split, audio_rows, paths.audio_table(conf, split))
        fids = [r["fid"] for r in audio_rows]
        text_input = None
        if need_embeds:
            text_input = load_text_embeddings(paths.text_embeds(conf), split, rows)  # (n_captions, D)
        query = True
    else:
        data = load_split(conf, split, need_embeds=need_embeds)
        rows, fids, store, text_input, query = data.text_rows, data.fids, data.features, data.text_embeds, False
    if need_embeds:
        check_vector_provenance(paths.text_embeds(conf), conf.text.model)  # the run's text.model made them
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
    check_embeddings(f"split '{inputs.split}'", audio, fids, text, [r["tid"] for r in inputs.text_rows])
    scores = run.model.score(audio, text).numpy().astype(np.float32, copy=False)  # (n_captions, n_clips)
    require_finite(scores, f"the scores of split '{inputs.split}'")
    return scores


def check_embeddings(where: str, audio: torch.Tensor, fids: list[str], text: torch.Tensor, tids: list[str]) -> None:
    """:class:`NonFiniteError` naming ``where`` and the first clip (fid) or caption (tid) with a NaN or infinite
    embedding: such a vector would score as anything."""
    require_finite(audio.numpy(), f"the clip embeddings of {where}", fids, "clip")
    require_finite(text.numpy(), f"the caption embeddings of {where}", tids, "caption")


def write_scores(path: str | os.PathLike, scores: np.ndarray, text_ids: list[str], audio_ids: list[str],
                 attrs: dict | None = None) -> Path:
    """Write a score file atomically: ``scores`` (n_captions, n_clips) float32, ``text_ids``, ``audio_ids``."""
    path = Path(path)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape != (len(text_ids), len(audio_ids)):
        raise ValueError(f"scores {scores.shape} do not match {len(text_ids)} text ids x {len(audio_ids)} audio ids")
    string = h5py.string_dtype("utf-8")
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("scores", data=scores)
        f.create_dataset("text_ids", data=np.array(text_ids, dtype=object), dtype=string)
        f.create_dataset("audio_ids", data=np.array(audio_ids, dtype=object), dtype=string)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
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
