"""Import the released DCASE 2023 Task 6B baseline weights (Zenodo record 7752975).

    python pretrained_models/import_dcase2023.py --conf conf.yaml --checkpoint PATH --out RUN_DIR
    python pretrained_models/import_dcase2023.py --conf conf.yaml --audio-encoder audio_encoder.pth --out FILE.pth

--checkpoint: the baseline's training checkpoint -> RUN_DIR, a run directory that postprocessing/01-02,
search.py and Retriever.from_run use like one made by main.py (checkpoints/best.pt).
--audio-encoder: the baseline's audio_encoder.pth -> FILE.pth, usable as pretrained.cnn14_weights to start
training from the baseline's fine-tuned CNN14 instead of PANNs. The logic lives in utils/pretrained/dcase2023_import.py.
"""

from __future__ import annotations

import argparse

from utils.base.config import Config
from utils.cli import make_parser, run
from utils.pretrained.dcase2023_import import import_audio_encoder, import_checkpoint


def main(args: argparse.Namespace, conf: Config) -> None:
    if args.checkpoint:
        best = import_checkpoint(conf, args.checkpoint, args.out)
        print(f"imported {args.checkpoint} -> {best}\nscore it with: python postprocessing/01_xmodal_scores.py "
              f"--conf {args.conf} --run {args.out}")
    else:
        out = import_audio_encoder(conf, args.audio_encoder, args.out)
        print(f"imported {args.audio_encoder} -> {out}\ntrain from it with: --set pretrained.cnn14_weights={out}")


parser = make_parser(__doc__.splitlines()[0])
source = parser.add_mutually_exclusive_group(required=True)
source.add_argument("--checkpoint", metavar="PATH", help="the baseline's training checkpoint (model + optimizer)")
source.add_argument("--audio-encoder", metavar="PATH", help="the baseline's audio_encoder.pth")
parser.add_argument("--out", required=True, metavar="RUN_DIR|FILE.pth",
                    help="run directory to create (--checkpoint) or weights file to write (--audio-encoder)")

if __name__ == "__main__":
    run(main, parser)
