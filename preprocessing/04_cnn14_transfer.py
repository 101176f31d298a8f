"""Stage 4: turn the PANNs CNN14 checkpoint into CNN14Encoder weights (conf.pretrained.cnn14_weights).

Needs Cnn14_mAP=0.431.pth from Zenodo record 3987831 at conf.pretrained.panns_checkpoint. Uses
model.audio_enc.out_dim and .width; the new projection fc2 is initialised with train.seed.

    python preprocessing/04_cnn14_transfer.py --conf conf.yaml
"""

from __future__ import annotations

import argparse

from utils.base.config import Config, ConfigError
from utils.cli import make_parser, run
from utils.pretrained.cnn14_transfer import save_cnn14_weights, summary, transfer_panns

parser = make_parser("Stage 4: PANNs CNN14 checkpoint -> CNN14Encoder weights.")
parser.add_argument("--checkpoint", default=None, help="PANNs checkpoint (default: conf.pretrained.panns_checkpoint)")
parser.add_argument("--out", default=None, help="output weights (default: conf.pretrained.cnn14_weights)")


def main(args: argparse.Namespace, conf: Config) -> None:
    enc = conf.model.audio_enc
    if enc.name != "CNN14Encoder":
        raise ConfigError(f"stage 4 makes weights for CNN14Encoder only; model.audio_enc.name is '{enc.name}'")
    checkpoint = args.checkpoint or conf.pretrained.panns_checkpoint
    out = args.out or conf.pretrained.cnn14_weights
    state, report = transfer_panns(checkpoint, out_dim=enc.out_dim, width=enc.width, seed=conf.train.seed)
    save_cnn14_weights(state, out)
    print(summary(report, out))


if __name__ == "__main__":
    run(main, parser)
