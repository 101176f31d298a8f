"""Stage 2: every split's clips -> log-mel spectrograms, <work_dir>/<split>_audio_logmels.hdf5.

    python preprocessing/02_audio_logmel.py --conf conf.yaml [--workers N] [--device cpu|cuda] [--splits S ...]

One (T, 64) float32 dataset per fid (the baseline's formula, see utils/features/logmel.py); with
features.kind: waveform, mono audio at features.sample_rate, (samples, 1), in <split>_audio_waveforms_<rate>hz.hdf5. Resumable: stop it
at any point and rerun the same command; finished clips are kept. Unreadable clips are added to
<work_dir>/<split>_skipped.csv and the run continues.
"""

from __future__ import annotations

from pathlib import Path

from utils.base import paths
from utils.base.config import ConfigError
from utils.base.tables import read_audio_table
from utils.cli import make_parser, run
from utils.features.extract import extract_split

parser = make_parser("Stage 2: log-mel spectrograms of every split's clips (resumable).")
parser.add_argument("--workers", type=int, default=None,
                    help="worker processes (default: features.workers; 0 = all CPU cores)")
parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                    help="'cpu' (process pool) or 'cuda' (batched on the GPU); default: features.device")
parser.add_argument("--splits", nargs="+", default=None, metavar="SPLIT",
                    help="only these splits (default: every split in the config)")
parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args, conf) -> None:
    every = conf.data.all_splits()
    splits = args.splits or every
    unknown = [s for s in splits if s not in every]
    if unknown:
        raise ConfigError(f"--splits {unknown} not in the config; choose from {every}")
    workers = conf.features.workers if args.workers is None else args.workers
    device = args.device or conf.features.device
    f = conf.features
    for split in splits:
        rows = read_audio_table(paths.audio_table(conf, split))
        summary = extract_split(rows, Path(conf.data.dataset_dir), paths.features(conf, split),
                                paths.skipped_table(conf, split), workers=workers, device=device,
                                progress=not args.no_progress, n_mels=f.n_mels, win_sec=f.win_sec,
                                hop_sec=f.hop_sec, desc=split, kind=f.kind, sample_rate=f.sample_rate)
        print(f"[{split}] {summary.describe()}")
        if summary.skipped:
            print(f"[{split}] {len(summary.skipped)} clip(s) skipped, see {paths.skipped_table(conf, split)}")


if __name__ == "__main__":
    run(main, parser)
