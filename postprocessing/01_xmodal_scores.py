"""Postprocessing 1: text-to-audio score matrices of the evaluation (and challenge query) splits.

    python postprocessing/01_xmodal_scores.py --conf conf.yaml --run runs/baseline [--checkpoint best|last]
                                              [--splits evaluation ...] [--device auto]
    python postprocessing/01_xmodal_scores.py --conf conf.yaml --run 'runs/baseline-seed*'   # each run in turn
    python postprocessing/01_xmodal_scores.py --conf conf.yaml --ensemble runs/A runs/B --out runs/ens-AB

Loads the run's model (RUN_DIR/config.yaml + checkpoints/<checkpoint>.pt); data paths and eval settings come
from --conf (default: the run's own config.yaml) and --set. For each split of data.eval_splits and
data.query_splits, every clip and every caption is embedded once (clips batched by length, eval.batch_size, each
clip's vector the one it gets alone; float32 unless eval.amp) and the scores are one matrix product, written to RUN_DIR/eval/<split>_xmodal_scores.hdf5:
scores float32 (n_captions, n_clips), text_ids (row order of <split>_text.csv), audio_ids (fids).
--ensemble writes a run directory (--out) whose scores are the mean of the members' (utils.evaluation.ensemble).
"""

from __future__ import annotations

import time
from pathlib import Path

from utils.base.devices import amp_dtype
from utils.base.errors import PipelineError
from utils.base.fileio import ensure_writable
from utils.cli import add_run_args, expand_runs, make_parser, run, run_dirs_of
from utils.evaluation.ensemble import score_ensemble
from utils.evaluation.scoring import (
    eval_config,
    load_split_inputs,
    score_split,
    splits_to_score,
    write_scores,
)
from utils.runs import eval_file, load_run, run_file


def main(args, conf) -> None:
    if args.ensemble:
        if not args.out or args.run:
            raise PipelineError("--ensemble RUN ... needs --out DIR (the ensemble's run directory) and no --run")
        ensure_writable(run_file(args.out, "eval"), "evaluation results")
        score_ensemble(conf, expand_runs(args.ensemble), Path(args.out), args.checkpoint or conf.eval.checkpoint,
                       args.device or conf.train.device, args.splits)
        return
    run_dirs = run_dirs_of(args, conf)
    for run_dir in run_dirs:
        ensure_writable(run_file(run_dir, "eval"), "evaluation results")  # before the work, not after it
    for run_dir in run_dirs:
        score_run(args, conf, run_dir)


def score_run(args, conf, run_dir) -> None:
    """Score every split of one run."""
    loaded = load_run(run_dir, args.checkpoint or conf.eval.checkpoint, args.device or conf.train.device)
    conf = eval_config(conf, loaded.conf)
    loaded.dtype = amp_dtype(conf.eval.amp, loaded.device)  # float32 unless --set eval.amp=... asks for autocast
    print(f"run {run_dir}: checkpoints/{loaded.checkpoint}.pt (epoch {loaded.epoch}) on {loaded.device}")
    for split in splits_to_score(conf, args.splits):
        start = time.perf_counter()
        inputs = load_split_inputs(conf, split, loaded.model.text_input_kind, loaded.text_dim)
        scores = score_split(loaded, inputs, conf.eval.batch_size, progress=True)  # (n_captions, n_clips)
        attrs = {"split": split, "checkpoint": loaded.checkpoint, "run_dir": str(run_dir), "query_split": inputs.query,
                 "epoch": -1 if loaded.epoch is None else loaded.epoch}
        path = write_scores(eval_file(run_dir, split, "scores"), scores, [r["tid"] for r in inputs.text_rows], inputs.fids,
                            attrs)
        print(f"[{split}] {scores.shape[0]} captions x {scores.shape[1]} clips "
              f"in {time.perf_counter() - start:.1f} s -> {path}")


parser = make_parser(__doc__.splitlines()[0])
add_run_args(parser)
parser.add_argument("--checkpoint", choices=["best", "last"], default=None,
                    help="checkpoint to score (default: eval.checkpoint)")
parser.add_argument("--splits", nargs="+", default=None,
                    help="splits to score (default: data.eval_splits + data.query_splits)")
parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: train.device)")
parser.add_argument("--ensemble", nargs="+", default=None, metavar="RUN_DIR",
                    help="score an ensemble of these runs (globs too): the mean of their similarity matrices")
parser.add_argument("--out", default=None, metavar="DIR", help="with --ensemble: the ensemble's run directory")

if __name__ == "__main__":
    run(main, parser)
