"""Stage 3: embed every caption (raw_text) with a frozen Sentence-BERT model into one HDF5 file.

    python preprocessing/03_sbert_embeddings.py --conf conf.yaml

Reads <work_dir>/<split>_text.csv for each split in data.splits and data.query_splits and writes
<work_dir>/<data.text_embeds>: a group per split with 'tids' and 'embeds' (N, D) float32. A split whose caption
table is unchanged since the last run (same fingerprint, same model) is kept, not re-encoded. The model is
text.model (default all-mpnet-base-v2; get it with python pretrained_models/get_sbert.py).
"""

from __future__ import annotations

import argparse
import time

from utils.base import paths
from utils.base.config import Config
from utils.base.devices import resolve_device
from utils.base.errors import DataError
from utils.base.tables import read_text_table
from utils.cli import make_parser, run
from utils.data.caption_vectors import embedding_dim, update_text_embeddings
from utils.text.fingerprint import weights_fingerprint
from utils.text.sbert import encode, load_sbert, resolve_model_path

parser = make_parser("Stage 3: Sentence-BERT embeddings of every caption (one HDF5 file in work_dir).")


def main(args: argparse.Namespace, conf: Config) -> None:
    tables = {split: read_text_table(paths.text_table(conf, split)) for split in conf.data.all_splits()}
    device = str(resolve_device(conf.text.device))
    models = []  # loaded on first use: nothing is loaded when every split is unchanged

    def encode_texts(texts: list[str]):
        if not models:
            print(f"loading {conf.text.model} from {resolve_model_path(conf.text.model)} on {device}")
            models.append(load_sbert(conf.text.model, device))
        return encode(models[0], texts, conf.text.batch_size, device)  # (N, D) float32

    out = paths.text_embeds(conf)
    start = time.perf_counter()
    try:
        fingerprint = weights_fingerprint(conf.text.model)  # of the weights that will encode: stored with the vectors
    except DataError:  # no local copy yet: loading it from the hub makes one
        encode_texts([])
        fingerprint = weights_fingerprint(conf.text.model)
    status = update_text_embeddings(out, tables, conf.text.model, encode_texts, fingerprint)
    print(f"model: {conf.text.model} ({fingerprint[:19]}...)  dim: {embedding_dim(out)}  "
          f"({time.perf_counter() - start:.1f} s)")
    for split, rows in tables.items():
        print(f"  {split:<12} {len(rows):>6} captions  {status[split]}")
    print(f"wrote {out}")


if __name__ == "__main__":
    run(main, parser)
