"""Stage 0: write the built-in demo dataset (synthetic sounds + matching captions) in the Clotho layout.

    python preprocessing/00_make_demo_dataset.py --conf conf.yaml [--set data.dataset_dir=DIR] [--clips 240]

Writes clotho_captions_<split>.csv, <split>/*.wav and demo_manifest.json into data.dataset_dir.
Rerunning with the same parameters does nothing; --force regenerates. Refuses to write into a
folder that holds a real (non-demo) Clotho dataset.
"""

from __future__ import annotations

from utils.cli import make_parser, run
from utils.demo_data import demo_dataset_complete, make_demo_dataset


def main(args, conf) -> None:
    out_dir = conf.data.dataset_dir
    params = dict(n_clips=args.clips, seed=args.seed, sample_rate=args.sample_rate,
                  duration_range=tuple(args.duration_range))
    if not args.force and demo_dataset_complete(out_dir, **params):
        print(f"demo dataset already complete in {out_dir} ({args.clips} clips, seed {args.seed}); "
              "nothing to do (--force regenerates it)")
        return
    counts = make_demo_dataset(out_dir, progress=True, **params)
    print(", ".join(f"{split}: {n} clips" for split, n in counts.items()) + f" -> {out_dir}")


parser = make_parser(__doc__.splitlines()[0])
parser.add_argument("--clips", type=int, default=240, help="total clips, split about 60/20/20 (default: 240)")
parser.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical files (default: 0)")
parser.add_argument("--sample-rate", type=int, default=16000, help="sample rate of most clips in Hz (default: 16000)")
parser.add_argument("--duration-range", type=float, nargs=2, default=[5.0, 15.0], metavar=("MIN", "MAX"),
                    help="clip length range in seconds (default: 5 15)")
parser.add_argument("--force", action="store_true", help="regenerate even if a complete demo dataset exists")

if __name__ == "__main__":
    run(main, parser)
