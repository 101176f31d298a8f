"""Ensembles of trained runs: score matrices that are the mean of the members' similarity matrices.

    python postprocessing/01_xmodal_scores.py --conf C --ensemble runs/A runs/B runs/C --out runs/ens-ABC

writes ``runs/ens-ABC`` as a run directory: ``eval/<split>_xmodal_scores.hdf5`` (the mean of the members'
scores, in the usual format, so 02, 03 and the submission CSV read it like any run), ``ensemble.json`` (the
members, :func:`utils.runs.write_ensemble_record`) and ``config.yaml`` (the first member's). The members must
agree on the log-mel features and the text model (:func:`check_members_agree`). Search over an ensemble is
:mod:`utils.search.ensemble`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from utils.base.config import Config
from utils.base.errors import PipelineError
from utils.evaluation.scoring import (
    SplitInputs,
    eval_config,
    load_split_inputs,
    score_split,
    splits_to_score,
    write_scores,
)
from utils.runs import LoadedRun, eval_file, load_run, write_ensemble_record

FEATURE_KEYS = ("n_mels", "win_sec", "hop_sec")  # what makes two runs' log-mels the same


def check_members_agree(members: list[LoadedRun]) -> None:
    """A :class:`PipelineError` naming the key and two runs when members use other log-mel features or another
    text model (their clips and captions would not be the same inputs)."""
    if not members:
        raise PipelineError("an ensemble needs at least one member run")
    ref = members[0]
    for other in members[1:]:
        pairs = [(f"features.{k}", getattr(ref.conf.features, k), getattr(other.conf.features, k))
                 for k in FEATURE_KEYS] + [("text.model", ref.conf.text.model, other.conf.text.model)]
        for key, a, b in pairs:
            if a != b:
                raise PipelineError(f"ensemble members disagree on {key}: {ref.run_dir} has {a!r}, {other.run_dir} "
                                    f"has {b!r}; an ensemble's members must share the features and text model")


def ensemble_scores(conf: Config, members: list[LoadedRun], split: str,
                    batch_size: int) -> tuple[np.ndarray, SplitInputs]:
    """The mean of the members' ``(n_captions, n_clips)`` score matrices of ``split``, and the inputs scored."""
    total, first = None, None
    for member in members:
        member_conf = eval_config(conf, member.conf)
        inputs = load_split_inputs(member_conf, split, member.model.text_input_kind, member.text_dim)
        scores = score_split(member, inputs, batch_size, progress=True).astype(np.float64)  # (n_captions, n_clips)
        total = scores if total is None else total + scores
        first = inputs if first is None else first
    return (total / len(members)).astype(np.float32), first


def score_ensemble(conf: Config, member_dirs: list[Path], out: Path, checkpoint: str, device: str,
                   splits: list[str] | None = None) -> list[Path]:
    """Load every member, check they agree, and write ``out`` (the score files, record and config)."""
    if Path(out).resolve() in [Path(m).resolve() for m in member_dirs]:
        raise PipelineError(f"--out {out} is one of the members; give the ensemble a directory of its own")
    members = [load_run(m, checkpoint, device) for m in member_dirs]
    check_members_agree(members)
    run_conf = eval_config(conf, members[0].conf)
    write_ensemble_record(out, member_dirs, checkpoint, run_conf)
    written = []
    for split in splits_to_score(run_conf, splits):
        scores, inputs = ensemble_scores(conf, members, split, conf.eval.batch_size)
        attrs = {"split": split, "checkpoint": checkpoint, "run_dir": str(out), "query_split": inputs.query,
                 "epoch": -1, "ensemble": json.dumps([str(m) for m in member_dirs])}
        written.append(write_scores(eval_file(out, split, "scores"), scores, [r["tid"] for r in inputs.text_rows],
                                    inputs.fids, attrs))
        print(f"[{split}] ensemble of {len(members)}: {scores.shape[0]} captions x {scores.shape[1]} clips -> "
              f"{written[-1]}")
    return written
