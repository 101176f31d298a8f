"""The listening page: a small local web app over a :class:`utils.search.Retriever` (``search.py --serve``).

One static page (``utils/search_page_static/``: HTML, CSS and JS, nothing fetched from outside) and a JSON API:

    GET  /api/search?q=TEXT&k=10      text -> audio
    GET  /api/like?path=REL&k=10      audio -> audio, by the stored embedding of an indexed clip
    POST /api/upload?name=F.wav&k=10  audio -> audio, by an uploaded clip (raw body, size-limited, temp dir)
    GET  /api/captions                the evaluation split's captions (``--split``)
    GET  /api/eval?caption=I&k=10     one caption's ranking, with the true clip and its rank
    GET  /api/status                  files indexed, skipped and why, last refresh
    POST /api/refresh                 re-scan the folder (or file list) and embed what changed
    GET  /audio/REL                   stream an indexed file (HTTP range requests work)

Only files of the index can be streamed, and only when their real path lies inside the indexed folder
(``../``, absolute paths and symlinks pointing out are refused). Bad requests get a 4xx JSON ``{"error": ...}``;
an unexpected error is a bare 500 without a traceback. Starlette + uvicorn (see README, "The listening page").
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np
import soundfile as sf
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from utils import paths
from utils.audio import AUDIO_EXTENSIONS
from utils.errors import DataError, PipelineError
from utils.metrics import top_k
from utils.search import Retriever
from utils.search_index import FolderIndex, IndexUpdate
from utils.tables import TEXT_COLUMNS, read_rows

STATIC_DIR = Path(__file__).resolve().parent / "search_page_static"
STATIC_FILES = {"page.js": "text/javascript", "page.css": "text/css"}
MAX_K = 100  # most results one request may ask for
DEFAULT_UPLOAD_MB = 20.0  # uploaded query clips larger than this are refused (413)
UPLOAD_CHUNK = 1 << 16
AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".opus": "audio/ogg",
               ".mp3": "audio/mpeg", ".m4a": "audio/mp4", ".aiff": "audio/aiff", ".aif": "audio/aiff"}


class BadRequest(HTTPException):
    """A 4xx answered as ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(status_code=status, detail=message)


@dataclass
class EvalCaption:
    """One caption of the evaluation split and the index row of its clip."""

    text: str
    tid: str
    fname: str
    row: int  # row of the true clip in the index


@dataclass
class PageState:
    """Everything the page serves: the retriever with its index, how to refresh it, and the evaluation split."""

    retriever: Retriever
    refresh_index: Callable[[], IndexUpdate]  # re-scans the folder / file list and updates retriever.index
    source: str  # what was indexed, as the user named it (folder or file list)
    split: str | None = None
    captions: list[EvalCaption] = field(default_factory=list)
    captions_left_out: int = 0  # captions of the split whose clip is not in the index
    max_upload_bytes: int = int(DEFAULT_UPLOAD_MB * 1e6)
    use_faiss: bool = False  # search.py --faiss
    last_update: IndexUpdate | None = None
    refreshed: float = 0.0  # time.time() of the last refresh
    lock: threading.Lock = field(default_factory=threading.Lock)  # one model call at a time
    rows: dict[str, int] = field(default_factory=dict)  # relative path -> index row
    durations: dict[str, float | None] = field(default_factory=dict)
    upload_dir: tempfile.TemporaryDirectory = field(
        default_factory=lambda: tempfile.TemporaryDirectory(prefix="search-page-uploads-"))

    def refresh(self) -> IndexUpdate:
        with self.lock:
            self.last_update = self.refresh_index()
            self.retriever.index = inside_only(self.retriever.index)
            self.refreshed = time.time()
            self.rows = {p: i for i, p in enumerate(self.retriever.index.paths)}
            self.durations = {}
            if self.split:
                self.load_split(self.split)
        return self.last_update

    def load_split(self, split: str) -> None:
        """Read ``<work_dir>/<split>_text.csv`` and match each caption's clip (``fname``) to the index."""
        conf = self.retriever.conf
        table = paths.text_table(conf, split)
        rows = read_rows(table, TEXT_COLUMNS, hint=f"run stage 1 for split '{split}' first "
                         f"(python preprocessing/01_clotho_dataset.py) or pick another --split")
        by_name: dict[str, int] = {}
        for rel, row in self.rows.items():
            by_name.setdefault(rel, row)
            by_name.setdefault(rel.rsplit("/", 1)[-1], row)
        self.captions = [EvalCaption(r["raw_text"] or r["text"], r["tid"], r["fname"], by_name[r["fname"]])
                         for r in rows if r["fname"] in by_name]
        self.captions_left_out = len(rows) - len(self.captions)
        if rows and not self.captions:
            raise PipelineError(f"none of the clips of {table} are in {self.retriever.index.folder}: serve the "
                                f"split's audio folder (e.g. --audio {paths.audio_dir(conf, split)})")
        self.split = split

    def duration(self, rel: str) -> float | None:
        """Seconds of an indexed file (read from its header once), None when the header says nothing."""
        if rel not in self.durations:
            try:
                self.durations[rel] = round(float(sf.info(str(self.retriever.index.folder / rel)).duration), 2)
            except (RuntimeError, OSError, sf.LibsndfileError):
                self.durations[rel] = None
        return self.durations[rel]

    def result(self, rank: int, rel: str, score: float) -> dict:
        return {"rank": rank, "score": round(float(score), 4), "path": rel, "name": rel.rsplit("/", 1)[-1],
                "duration": self.duration(rel), "url": "/audio/" + quote(rel)}

    def results(self, hits: Sequence[tuple[str, float]]) -> list[dict]:
        folder = self.retriever.index.folder
        return [self.result(i, Path(p).relative_to(folder).as_posix(), s) for i, (p, s) in enumerate(hits, 1)]

    def status(self) -> dict:
        index = self.retriever.index
        update = self.last_update
        run = self.retriever.run
        return {
            "source": self.source, "folder": str(index.folder), "files": len(index),
            "skipped": [{"path": p, "reason": v[2]} for p, v in sorted(index.skipped.items())],
            "missing": list(update.missing) if update else [],
            "refreshed": datetime.fromtimestamp(self.refreshed, timezone.utc).isoformat(timespec="seconds"),
            "last_refresh": update.summary() if update else "",
            "run": str(run.run_dir), "checkpoint": run.checkpoint, "epoch": run.epoch,
            "text_model": self.retriever.conf.text.model,
            "split": self.split, "captions": len(self.captions), "captions_left_out": self.captions_left_out,
            "max_upload_mb": round(self.max_upload_bytes / 1e6, 2),
        }


def open_page(retriever: Retriever, refresh_index: Callable[[], IndexUpdate], source: str,
              split: str | None = None, max_upload_mb: float = DEFAULT_UPLOAD_MB,
              use_faiss: bool = False) -> PageState:
    """Index (``refresh_index``), then read the evaluation split: the state :func:`make_app` serves."""
    if max_upload_mb <= 0:
        raise PipelineError(f"--max-upload-mb must be > 0, got {max_upload_mb}")
    state = PageState(retriever, refresh_index, source, max_upload_bytes=int(max_upload_mb * 1e6),
                      use_faiss=use_faiss)
    state.refresh()
    if split:
        state.load_split(split)
    return state


def inside_only(index: FolderIndex) -> FolderIndex:
    """``index`` without the files whose real path is outside its folder (symlinks pointing out): the page
    neither ranks nor streams them; they are listed as skipped, with the reason."""
    folder = os.path.realpath(index.folder)
    out = [i for i, p in enumerate(index.paths)
           if os.path.commonpath([folder, os.path.realpath(os.path.join(folder, p))]) != folder]
    if not out:
        return index
    keep = np.setdiff1d(np.arange(len(index)), out)
    skipped = dict(index.skipped)
    for i in out:
        skipped[index.paths[i]] = (int(index.mtimes[i]), int(index.sizes[i]),
                                   "a link to a file outside the indexed folder: not served")
    return FolderIndex(index.folder, index.model_key, [index.paths[i] for i in keep], index.mtimes[keep],
                       index.sizes[keep], index.embeddings[keep], skipped)


# --------------------------------------------------------------------------------------------
# Request helpers
# --------------------------------------------------------------------------------------------


def get_k(request: Request) -> int:
    raw = request.query_params.get("k", "10")
    try:
        k = int(raw)
    except ValueError:
        raise BadRequest(f"k must be a whole number, got '{raw[:20]}'") from None
    if not 1 <= k <= MAX_K:
        raise BadRequest(f"k must be between 1 and {MAX_K}, got {k}")
    return k


def safe_file(state: PageState, rel: str) -> Path:
    """The file ``rel`` of the index, after checking that its real path lies inside the indexed folder."""
    if not rel or rel.startswith(("/", "\\")) or os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
        raise BadRequest(f"'{rel[:200]}' is not a path inside the indexed folder "
                         "(absolute paths and '..' are refused)")
    if rel not in state.rows:
        raise BadRequest(f"'{rel[:200]}' is not an indexed file", 404)
    folder = os.path.realpath(state.retriever.index.folder)
    real = os.path.realpath(os.path.join(folder, rel))
    if os.path.commonpath([folder, real]) != folder:
        raise BadRequest(f"'{rel[:200]}' is a link to a file outside the indexed folder; it is not served", 403)
    if not os.path.isfile(real):
        raise BadRequest(f"'{rel[:200]}' is gone from the folder; refresh the index", 404)
    return Path(real)


def timed(state: PageState, run: Callable[[], list[tuple[str, float]]], **extra) -> JSONResponse:
    """Run a search under the model lock; answer its results with the server time in ms."""
    start = time.perf_counter()
    try:
        with state.lock:
            hits = run()
    except (PipelineError, DataError) as err:
        raise BadRequest(str(err)) from err
    return JSONResponse({**extra, "results": state.results(hits),
                         "server_ms": round(1000 * (time.perf_counter() - start), 2)})


# --------------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------------


def page(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC_FILES:
        raise BadRequest(f"no static file '{name[:100]}'", 404)
    return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])


def search_text(request: Request) -> Response:
    state: PageState = request.app.state.page
    query = request.query_params.get("q", "")
    if not query.strip():
        raise BadRequest("the query is empty: type a description such as \"a dog barks while cars pass\"")
    k = get_k(request)
    return timed(state, lambda: state.retriever.search(query, k, state.use_faiss), query=query, kind="text")


def search_like(request: Request) -> Response:
    state: PageState = request.app.state.page
    rel = request.query_params.get("path", "")
    safe_file(state, rel)
    k = get_k(request)

    def run() -> list[tuple[str, float]]:
        row = state.rows[rel]  # read under the lock: a refresh may renumber the rows
        return state.retriever.search_embeddings(state.retriever.index.embeddings[row:row + 1], k, state.use_faiss)[0]

    return timed(state, run, like=rel, kind="audio")


async def search_upload(request: Request) -> Response:
    state: PageState = request.app.state.page
    k = get_k(request)
    name = request.query_params.get("name", "")
    ext = os.path.splitext(name)[1].lower()
    if ext not in AUDIO_EXTENSIONS:
        raise BadRequest(f"upload an audio file ({', '.join(AUDIO_EXTENSIONS)}), got '{name[:100]}'", 415)
    limit = state.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"the clip is {int(declared) / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB", 413)
    target = Path(state.upload_dir.name) / f"{uuid.uuid4().hex}{ext}"  # never the client's name
    try:
        size = 0
        with open(target, "wb") as stream:
            try:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise BadRequest(f"the clip is larger than the {limit / 1e6:.1f} MB limit", 413)
                    stream.write(chunk)
            except ClientDisconnect:
                raise BadRequest("the upload was interrupted") from None
        if size == 0:
            raise BadRequest("the uploaded clip is empty")
        return await run_in_threadpool(timed, state, lambda: state.retriever.search_audio(target, k, state.use_faiss),
                                       like=name, kind="upload")
    finally:
        target.unlink(missing_ok=True)


def captions(request: Request) -> Response:
    state: PageState = request.app.state.page
    if not state.split:
        raise BadRequest("no evaluation split: start the page with --split NAME", 404)
    return JSONResponse({"split": state.split, "left_out": state.captions_left_out,
                         "captions": [{"i": i, "text": c.text, "fname": c.fname} for i, c in enumerate(state.captions)]})


def evaluate(request: Request) -> Response:
    """One caption's top-k, with its true clip flagged and the true clip's rank among all indexed files."""
    state: PageState = request.app.state.page
    if not state.split:
        raise BadRequest("no evaluation split: start the page with --split NAME", 404)
    raw = request.query_params.get("caption", "")
    if not raw.isdigit() or int(raw) >= len(state.captions):
        raise BadRequest(f"caption must be an index from 0 to {len(state.captions) - 1}, got '{raw[:20]}'")
    cap, k = state.captions[int(raw)], get_k(request)
    start = time.perf_counter()
    try:
        with state.lock:  # the index and the caption's row change together on a refresh
            index, row = state.retriever.index, cap.row
            scores = index.embeddings @ state.retriever.embed_text([cap.text])[0]  # (n_files,)
    except (PipelineError, DataError) as err:
        raise BadRequest(str(err)) from err
    order = top_k(scores, len(scores))  # (n_files,) best first, ties by lower row
    true_rank = int(np.flatnonzero(order == row)[0]) + 1
    paths_ = index.paths
    results = [state.result(i, paths_[r], scores[r]) | {"true": bool(r == row)} for i, r in enumerate(order[:k], 1)]
    return JSONResponse({"caption": cap.text, "i": int(raw), "fname": cap.fname, "true_path": paths_[row],
                         "true_rank": true_rank, "files": len(paths_), "results": results,
                         "server_ms": round(1000 * (time.perf_counter() - start), 2)})


def status(request: Request) -> Response:
    return JSONResponse(request.app.state.page.status())


def refresh(request: Request) -> Response:
    state: PageState = request.app.state.page
    try:
        state.refresh()
    except (PipelineError, DataError) as err:
        raise BadRequest(str(err), 409) from err
    return JSONResponse(state.status())


def audio(request: Request) -> Response:
    state: PageState = request.app.state.page
    real = safe_file(state, request.path_params["rel"])
    return FileResponse(real, media_type=AUDIO_TYPES.get(real.suffix.lower(), "application/octet-stream"))


async def http_error(request: Request, exc: HTTPException) -> Response:
    message = exc.detail
    if not isinstance(exc, BadRequest):  # Starlette's own: an unknown route or method
        message = f"{exc.detail}: {request.method} {request.url.path[:200]} (the API is listed in utils/search_page.py)"
    return JSONResponse({"error": message}, status_code=exc.status_code)


async def server_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server's log"}, status_code=500)


def make_app(state: PageState) -> Starlette:
    """The ASGI app serving ``state``."""
    routes = [
        Route("/", page), Route("/static/{name}", static),
        Route("/api/search", search_text), Route("/api/like", search_like),
        Route("/api/upload", search_upload, methods=["POST"]),
        Route("/api/captions", captions), Route("/api/eval", evaluate),
        Route("/api/status", status), Route("/api/refresh", refresh, methods=["POST"]),
        Route("/audio/{rel:path}", audio),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.page = state
    return app


# --------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one); a taken port is a :class:`PipelineError`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise PipelineError(f"cannot listen on {host}:{port} ({err.strerror}); pick another --port") from err
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def serve(state: PageState, host: str = "127.0.0.1", port: int = 8000, ready: Callable[[str], None] = print) -> None:
    """Serve the page until interrupted; ``ready(url)`` is called once the socket listens."""
    sock = bind(host, port)
    ready(url_of(sock))
    server = uvicorn.Server(uvicorn.Config(make_app(state), log_level="warning", access_log=False))
    server.run(sockets=[sock])


class BackgroundServer:
    """The page served from a thread on a free localhost port (tests and benchmarks): ``with ... as url:``."""

    def __init__(self, state: PageState, host: str = "127.0.0.1"):
        self.sock = bind(host, 0)
        self.url = url_of(self.sock)
        self.server = uvicorn.Server(uvicorn.Config(make_app(state), log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise PipelineError("the page server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
