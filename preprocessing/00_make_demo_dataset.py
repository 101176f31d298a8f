"""Stage 0: write the built-in demo dataset (synthetic sounds + matching captions) in the Clotho layout.

    python preprocessing/00_make_demo_dataset.py --conf conf.yaml [--set data.dataset_dir=DIR] [--clips 240] [--held-out N]

Writes clotho_captions_<split>.csv, <split>/*.wav and demo_manifest.json into data.dataset_dir.
Rerunning with the same parameters does nothing; --force regenerates. Refuses to write into a
folder that holds a real (non-demo) Clotho dataset.
"""

from __future__ import annotations

from pathlib import Path

from utils.cli import make_parser, run
from utils.demo.dataset import demo_dataset_complete, make_demo_dataset
from utils.pretrained.cnn14_transfer import write_stand_in_checkpoint


def write_stand_in(conf) -> None:
    """A random-weight checkpoint in the PANNs format, so the demo can run stage 4 without the download."""
    path = Path(conf.pretrained.panns_checkpoint)
    if path.is_file():
        print(f"PANNs-format checkpoint already at {path}")
        return
    write_stand_in_checkpoint(path, conf.model.audio_enc.width, seed=conf.train.seed)
    print(f"wrote a STAND-IN checkpoint with random weights (not pretrained) in the PANNs format to {path}")


def main(args, conf) -> None:
    out_dir = conf.data.dataset_dir
    if args.panns_stand_in:
        write_stand_in(conf)
    params = dict(n_clips=args.clips, seed=args.seed, sample_rate=args.sample_rate,
                  duration_range=tuple(args.duration_range), held_out=args.held_out)
    if not args.force and demo_dataset_complete(out_dir, **params):
        print(f"demo dataset already complete in {out_dir} ({args.clips} clips, seed {args.seed}); "
              "nothing to do (--force regenerates it)")
        return
    counts = make_demo_dataset(out_dir, progress=True, **params)
    print(", ".join(f"{split}: {n} clips" for split, n in counts.items()) + f" -> {out_dir}")


parser = make_parser(__doc__.splitlines()[0])
parser.add_argument("--clips", type=int, default=240, help="total clips, split about 60/20/20 (default: 240)")
parser.add_argument("--held-out", type=int, default=None, metavar="N",
                    help="clips in each of validation and evaluation; the rest go to development "
                         "(default: about 20%% each)")
parser.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical files (default: 0)")
parser.add_argument("--sample-rate", type=int, default=16000, help="sample rate of most clips in Hz (default: 16000)")
parser.add_argument("--duration-range", type=float, nargs=2, default=[5.0, 15.0], metavar=("MIN", "MAX"),
                    help="clip length range in seconds (default: 5 15)")
parser.add_argument("--force", action="store_true", help="regenerate even if a complete demo dataset exists")
parser.add_argument("--panns-stand-in", action="store_true",
                    help="also write a random-weight PANNs-format checkpoint at pretrained.panns_checkpoint "
                         "(if none is there) so stage 4 can run in the demo")

if __name__ == "__main__":
    run(main, parser)
