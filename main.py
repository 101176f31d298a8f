"""Train the DCASE 2023 Task 6B baseline (CNN14 + Sentence-BERT dual encoder, InfoNCE).

    python main.py --conf conf.yaml [--set train.epochs=10] [--restart]
    torchrun --nproc_per_node=N main.py --conf conf.yaml          # DistributedDataParallel
    python main.py --conf conf.yaml --seeds 0,1,2                 # runs <run.name>-seed0, -seed1, -seed2 in turn

Rerunning with the same run directory (run.dir/run.name) resumes from checkpoints/last.pt; rerunning a --seeds
sweep skips the finished seeds and resumes the interrupted one.
"""

from __future__ import annotations

from utils.base.errors import PipelineError
from utils.cli import make_parser, run
from utils.runs import checkpoint_file
from utils.training.loop import train
from utils.training.seeds import parse_seeds, train_seeds


def main(args, conf) -> None:
    last = checkpoint_file(conf.run_dir, "last")
    if args.resume and args.restart:
        raise PipelineError("--resume and --restart contradict each other; pass one of them")
    if args.seeds is not None:
        if args.resume:
            raise PipelineError("--resume with --seeds: a sweep resumes by itself (finished seeds are skipped); "
                                "drop --resume")
        train_seeds(conf, parse_seeds(args.seeds), restart=args.restart)
        return
    if args.resume and not last.is_file():
        raise PipelineError(f"--resume: there is no {last} to resume from; drop --resume to start a new run")
    train(conf, restart=args.restart)


parser = make_parser(__doc__.splitlines()[0])
parser.add_argument("--resume", action="store_true",
                    help="insist on continuing from <run dir>/checkpoints/last.pt: an error if it does not exist "
                         "(without either flag a run resumes when last.pt exists)")
parser.add_argument("--restart", action="store_true", help="ignore an existing last.pt and train from scratch")
parser.add_argument("--seeds", default=None, metavar="K,K,...",
                    help="train one run per seed, <run.name>-seed<k> with train.seed=k, one after the other "
                         "(e.g. --seeds 0,1,2); rerun the same command to continue a killed sweep")

if __name__ == "__main__":
    run(main, parser)
