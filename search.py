"""Search a folder of audio files with captions or with a clip, using a trained run; or serve a listening page.

    python search.py --run runs/baseline --audio DIR [-k 10] [--faiss] [--device auto] "a dog barks while cars pass"
    python search.py --run runs/baseline --files LIST.txt --like query.wav --json
    python search.py --run runs/baseline --audio DIR --serve [--host 127.0.0.1] [--port 8000] [--split evaluation]
    torchrun --nproc_per_node=N search.py --run-dir runs/baseline --audio DIR [--index INDEX_DIR]  # N processes

The first search of a folder embeds every audio file in it (recursively) and stores the index in
RUN_DIR/search_index/ (or --index DIR) as shards committed as it goes: an interrupted run resumes where it
stopped, and later searches re-embed only files that were added or changed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from utils.base.errors import DataError, PipelineError
from utils.cli import call
from utils.search.embedder import check_queries
from utils.search.ensemble import open_retriever
from utils.search.index import IndexUpdate
from utils.search.indexer import IndexSettings
from utils.search.modes import read_file_list, results_json
from utils.search.page import serve as serve_page
from utils.search.page_state import open_page
from utils.search.ranks import Ranks, join_ranks
from utils.search.retriever import Retriever
from utils.search.store import FLUSH_FILES


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queries", nargs="*", metavar="QUERY", help="one or more captions to search for")
    parser.add_argument("--run", "--run-dir", dest="run", required=True, metavar="RUN_DIR",
                        help="run directory made by main.py, or an ensemble (01_xmodal_scores.py --ensemble); "
                             "under torchrun write --run-dir: torchrun takes --run for its own --run-path")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio", metavar="DIR", help="folder of audio files (searched recursively)")
    source.add_argument("--files", metavar="LIST.txt", help="text file naming the audio files, one per line")
    parser.add_argument("--like", action="append", default=[], metavar="PATH",
                        help="an audio file to use as the query (audio -> audio); repeatable")
    parser.add_argument("-k", type=int, default=10, help="files per query (default: 10)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (query, rank, score, path)")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best", help="default: best")
    parser.add_argument("--faiss", action="store_true", help="search with FAISS (pip install faiss-cpu): exact below 100,000 "
                        "files, an approximate IVF index above, its recall@10 printed")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--rebuild", action="store_true", help="ignore the cached index and re-embed every file")
    big = parser.add_argument_group("large libraries")
    big.add_argument("--index", metavar="INDEX_DIR", help="where the index lives (default: RUN_DIR/search_index/...)")
    big.add_argument("--workers", type=int, default=None,
                     help="decoding processes (default: all cores but one; 0: decode in the main process)")
    big.add_argument("--shard-files", type=int, default=FLUSH_FILES,
                     help=f"files per committed shard: at most this many are lost to a kill (default: {FLUSH_FILES})")
    page = parser.add_argument_group("listening page")
    page.add_argument("--serve", action="store_true", help="serve the search page instead of printing results")
    page.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    page.add_argument("--port", type=int, default=8000, help="default: 8000")
    page.add_argument("--split", metavar="NAME", help="evaluation view: the split's captions (<work_dir>/NAME_text.csv)")
    page.add_argument("--max-upload-mb", type=float, default=20.0, help="largest query clip to accept (default: 20)")
    return parser


def printable(name: str) -> str:
    """``name`` with control characters (a newline in a file name) escaped as ``\\n``, ``\\x1b``: one line."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in name)


def format_results(query: str, results: list[tuple[str, float]], folder: Path) -> str:
    """A small table: rank, score and the file's path relative to ``folder``."""
    lines = [f"query: {query}", f"{'rank':>4}  {'score':>7}  file"]
    for rank, (path, score) in enumerate(results, start=1):
        try:
            shown = Path(path).relative_to(folder).as_posix()
        except ValueError:
            shown = path
        lines.append(f"{rank:>4}  {score:>7.4f}  {printable(shown)}")
    return "\n".join(lines)


def check_args(args: argparse.Namespace) -> None:
    if args.k < 1:
        raise PipelineError(f"-k must be >= 1, got {args.k}")
    if args.workers is not None and args.workers < 0:
        raise PipelineError(f"--workers must be >= 0, got {args.workers}")
    if args.shard_files < 1:
        raise PipelineError(f"--shard-files must be >= 1, got {args.shard_files}")
    if args.serve:
        if args.queries or args.like or args.json:
            raise PipelineError("--serve takes no queries, --like or --json: search from the page")
    elif args.split:
        raise PipelineError("--split is for the page's evaluation view: add --serve")
    elif args.queries or not args.like:
        check_queries(args.queries)
    for like in args.like:
        if not Path(like).is_file():
            raise DataError(f"query clip not found: {like}")


def search(args: argparse.Namespace) -> None:
    check_args(args)
    ranks = join_ranks()
    try:
        search_on(args, ranks)
    finally:
        ranks.close()


def search_on(args: argparse.Namespace, ranks: Ranks) -> None:
    device = args.device
    if ranks.world > 1 and device == "auto" and torch.cuda.is_available():
        device = f"cuda:{ranks.local_rank}"  # one GPU per process under torchrun
    retriever = open_retriever(args.run, args.checkpoint, device)  # an ensemble run too
    retriever.indexing = IndexSettings(args.workers, args.shard_files, ranks=ranks,
                                       location=Path(args.index) if args.index else None)
    files = read_file_list(args.files) if args.files else None

    def refresh() -> IndexUpdate:
        if files is not None:
            return retriever.index_files(files, progress=ranks.main, rebuild=args.rebuild)
        return retriever.index_folder(args.audio, progress=ranks.main, rebuild=args.rebuild)

    if args.serve:
        if ranks.world > 1:
            raise PipelineError("--serve runs in one process: index with torchrun first, then serve with "
                                "python search.py ... --serve (it reuses the index)")
        serve(args, retriever, refresh)
        return
    update = refresh()
    if not ranks.main:
        return  # the other ranks only index; rank 0 searches, prints and serves
    folder = retriever.index.folder
    print(update.closing_line(len(retriever.index)), file=sys.stderr)
    out = []
    if args.queries:
        start = time.perf_counter()
        retriever.load_text_model()
        print(f"text model {retriever.conf.text.model} loaded in {time.perf_counter() - start:.2f} s",
              file=sys.stderr)
        start = time.perf_counter()
        results = retriever.search_many(args.queries, args.k, use_faiss=args.faiss)
        print(f"searched {len(args.queries)} quer{'y' if len(args.queries) == 1 else 'ies'} "
              f"in {time.perf_counter() - start:.3f} s", file=sys.stderr)
        out += [(q, "text", r) for q, r in zip(args.queries, results, strict=True)]
    for like in args.like:
        out.append((like, "audio", retriever.search_audio(like, args.k, use_faiss=args.faiss)))
    if args.json:
        print(json.dumps([results_json(q, kind, r) for q, kind, r in out], indent=1))
    else:
        print("\n\n".join(format_results(q if kind == "text" else f"sounds like {q}", r, folder)
                          for q, kind, r in out))


def serve(args: argparse.Namespace, retriever: Retriever, refresh: Callable[[], IndexUpdate]) -> None:
    """Index, load the text model, then serve the page until Ctrl-C."""
    start = time.perf_counter()
    state = open_page(retriever, refresh, args.files or args.audio, args.split, args.max_upload_mb, args.faiss)
    retriever.load_text_model()
    print(f"index of {args.files or retriever.index.folder}: {len(retriever.index)} files "
          f"({state.last_update.summary()}); ready in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    try:
        serve_page(state, args.host, args.port,
                   ready=lambda url: print(f"listening page: {url}  (Ctrl-C stops it)", flush=True))
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> int:
    return call(search, make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
