"""Search a folder of audio files with captions, using a trained run.

    python search.py --run runs/baseline --audio DIR [-k 10] [--faiss] [--device auto] "a dog barks while cars pass"

The first search of a folder embeds every audio file in it (recursively) and caches the index in
RUN_DIR/search_index/; later searches re-embed only files that were added or changed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from utils.cli import call
from utils.errors import PipelineError
from utils.search import Retriever, check_queries


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queries", nargs="+", metavar="QUERY", help="one or more captions to search for")
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory made by main.py")
    parser.add_argument("--audio", required=True, metavar="DIR", help="folder of audio files (searched recursively)")
    parser.add_argument("-k", type=int, default=10, help="files per query (default: 10)")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best", help="default: best")
    parser.add_argument("--faiss", action="store_true", help="search with a FAISS IndexFlatIP (pip install faiss-cpu)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--rebuild", action="store_true", help="ignore the cached index and re-embed every file")
    return parser


def format_results(query: str, results: list[tuple[str, float]], folder: Path) -> str:
    """A small table: rank, score and the file's path relative to ``folder``."""
    lines = [f"query: {query}", f"{'rank':>4}  {'score':>7}  file"]
    for rank, (path, score) in enumerate(results, start=1):
        try:
            shown = Path(path).relative_to(folder).as_posix()
        except ValueError:
            shown = path
        lines.append(f"{rank:>4}  {score:>7.4f}  {shown}")
    return "\n".join(lines)


def search(args: argparse.Namespace) -> None:
    check_queries(args.queries)
    if args.k < 1:
        raise PipelineError(f"-k must be >= 1, got {args.k}")
    retriever = Retriever.from_run(args.run, args.checkpoint, args.device)
    start = time.perf_counter()
    update = retriever.index_folder(args.audio, progress=True, rebuild=args.rebuild)
    folder = retriever.index.folder
    print(f"index of {folder}: {len(retriever.index)} files ({update.summary()}) "
          f"in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    start = time.perf_counter()
    retriever.load_text_model()
    print(f"text model {retriever.conf.text.model} loaded in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    start = time.perf_counter()
    results = retriever.search_many(args.queries, args.k, use_faiss=args.faiss)
    print(f"searched {len(args.queries)} quer{'y' if len(args.queries) == 1 else 'ies'} "
          f"in {time.perf_counter() - start:.3f} s", file=sys.stderr)
    print("\n\n".join(format_results(q, r, folder) for q, r in zip(args.queries, results, strict=True)))


def main(argv: list[str] | None = None) -> int:
    return call(search, make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
