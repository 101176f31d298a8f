"""Stage 0: download Clotho v2.1 from Zenodo into data.dataset_dir, every file MD5-verified (resumable).

    python preprocessing/00_download_clotho.py --conf conf.yaml [--splits development validation evaluation]
        [--mirror URL] [--checksums FILE] [--from DIR] [--keep-archives] [--weights] [--released]

Writes the layout stage 1 reads: clotho_captions_<split>.csv, clotho_metadata_<split>.csv and <split>/*.wav
(Zenodo record 4783391). --splits may add 'test' (the DCASE captioning test clips, record 3865658, into test/)
and 'retrieval' (the DCASE retrieval clips and query captions, record 6590983, into retrieval_audio/ and
retrieval_captions.csv). Rerun after any failure or kill: finished files are kept (verified again, not
fetched again), a partial download resumes with an HTTP Range request, and a split appears only complete.

--weights also fetches the PANNs checkpoint to pretrained.panns_checkpoint (Zenodo record 3987831; MD5,
SHA-256 and size checked). --released fetches the baseline's released weights (record 7752975) into
--released-dir, records their SHA-256 on first download (none is published) and verifies it afterwards, then
imports the checkpoint as the run --released-run (pretrained_models/import_dcase2023.py). The logic lives in
utils/data/download.py, utils/data/http_download.py, utils/data/archive_extract.py and utils/pretrained/released_weights.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from utils.base.config import Config
from utils.base.errors import DataError, warn
from utils.cli import make_parser, run
from utils.data.clotho_files import DEFAULT_SPLITS, PANNS, SPLITS
from utils.data.download import Source, download, read_checksums
from utils.data.http_download import TIMEOUT_S
from utils.pretrained.dcase2023_import import import_checkpoint
from utils.pretrained.released_weights import RELEASED, fetch_released
from utils.runs import checkpoint_file


def source_of(args: argparse.Namespace) -> Source:
    from_dir = Path(args.from_dir).expanduser() if args.from_dir else None
    if from_dir is not None and not from_dir.is_dir():
        raise DataError(f"--from {from_dir}: no such folder")
    sums = read_checksums(Path(args.checksums).expanduser()) if args.checksums else {}
    known = {f.name for s in SPLITS.values() for f in (s.archive, *s.tables)} | {PANNS.name}
    unknown = sorted(set(sums) - known)
    if unknown:
        warn(f"{args.checksums} names files this script does not fetch (ignored): {unknown[:5]}")
    return Source(mirror=args.mirror, from_dir=from_dir, md5_overrides=sums, timeout=args.timeout,
                  progress=not args.no_progress)


def import_released(conf: Config, checkpoint: Path, run_dir: Path) -> None:
    """Import the released checkpoint as ``run_dir`` once; a rerun finds ``best.pt`` and skips it."""
    if checkpoint_file(run_dir, "best").is_file():
        print(f"{run_dir}: the released checkpoint is already imported; skipped")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise DataError(f"{run_dir} exists without checkpoints/best.pt (an interrupted import?); remove it and rerun")
    print(f"imported {checkpoint} -> {import_checkpoint(conf, checkpoint, run_dir)}")


def main(args: argparse.Namespace, conf: Config) -> None:
    source = source_of(args)
    released_dir = Path(args.released_dir)
    extra = [(f, released_dir / f.name) for f in RELEASED] if args.released else []
    panns = Path(conf.pretrained.panns_checkpoint) if args.weights else None
    download(Path(conf.data.dataset_dir), args.splits, source, args.keep_archives, panns=panns, extra=extra)
    if args.released:
        paths = fetch_released(released_dir, source)
        import_released(conf, paths["checkpoint"], Path(args.released_run))
    print(f"done: {conf.data.dataset_dir} is ready for preprocessing/01_clotho_dataset.py")


parser = make_parser(__doc__.splitlines()[0])
parser.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS), choices=list(SPLITS), metavar="SPLIT",
                    help=f"splits to fetch, of {list(SPLITS)} (default: {' '.join(DEFAULT_SPLITS)})")
parser.add_argument("--mirror", metavar="URL", help="fetch every file as URL/<file name> instead of from Zenodo")
parser.add_argument("--checksums", metavar="FILE", help="MD5s overriding the built-in ones, md5sum format")
parser.add_argument("--from", dest="from_dir", metavar="DIR",
                    help="use the files already in DIR (verified, left in place); fetch only what DIR lacks")
parser.add_argument("--keep-archives", action="store_true", help="keep the 7z files after extraction")
parser.add_argument("--weights", action="store_true", help="also fetch the PANNs Cnn14_mAP=0.431.pth")
parser.add_argument("--released", action="store_true",
                    help="also fetch the DCASE 2023 baseline's released weights and import the checkpoint as a run")
parser.add_argument("--released-dir", default="pretrained_models/dcase2023", metavar="DIR",
                    help="where --released puts the files (default: pretrained_models/dcase2023)")
parser.add_argument("--released-run", default="runs/dcase2023", metavar="RUN_DIR",
                    help="the run --released imports the checkpoint as (default: runs/dcase2023)")
parser.add_argument("--timeout", type=float, default=TIMEOUT_S, metavar="SECONDS",
                    help=f"give up when the server sends nothing for this long (default: {TIMEOUT_S:g})")
parser.add_argument("--no-progress", action="store_true", help="no progress bars")

if __name__ == "__main__":
    run(main, parser)
