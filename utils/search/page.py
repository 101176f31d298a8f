"""The listening page: a small local web app over a :class:`utils.search.retriever.Retriever` (``search.py --serve``).

One static page (``utils/search/page_static/``: HTML, CSS and JS, nothing fetched from outside) and a JSON API:

    GET  /api/search?q=TEXT&k=10      text -> audio
    GET  /api/like?path=REL&k=10      audio -> audio, by the stored embedding of an indexed clip
    POST /api/upload?name=F.wav&k=10  audio -> audio, by an uploaded clip (raw body, size-limited, temp dir)
    GET  /api/captions                the evaluation split's captions (``--split``)
    GET  /api/eval?caption=I&k=10     one caption's ranking, with the true clip and its rank
    GET  /api/status                  files indexed, skipped and why, last refresh
    POST /api/refresh                 re-scan the folder (or file list) and embed what changed
    GET  /audio/REL                   stream an indexed file (HTTP range requests work)
    GET  /thumb/REL, /api/folders, /api/files   thumbnails and paged browsing (utils/search/page_browse.py)

/api/search, /api/like and /api/upload take filters: ``folder=SUB`` (a subfolder and its subfolders),
``min_s=`` and ``max_s=`` (seconds).

Only files of the index can be streamed, and only when their real path lies inside the indexed folder
(``../``, absolute paths and symlinks pointing out are refused). Bad requests get a 4xx JSON ``{"error": ...}``;
an unexpected error is a bare 500 without a traceback. Starlette + uvicorn (see README, "The listening page").
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from utils.base.errors import DataError, PipelineError
from utils.data.audio import AUDIO_EXTENSIONS
from utils.evaluation.metrics import top_k
from utils.search.page_browse import BROWSE_ROUTES
from utils.search.page_http import BadRequest, get_filter, get_k, safe_file
from utils.search.page_state import PageState

STATIC_DIR = Path(__file__).resolve().parent / "page_static"
STATIC_FILES = {"page.js": "text/javascript", "page.css": "text/css"}
UPLOAD_CHUNK = 1 << 16
AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".opus": "audio/ogg",
               ".mp3": "audio/mpeg", ".m4a": "audio/mp4", ".aiff": "audio/aiff", ".aif": "audio/aiff"}


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
    k, spec = get_k(request), get_filter(request)
    return timed(state, lambda: state.retriever.search(query, k, state.use_faiss, state.allowed(*spec)),
                 query=query, kind="text")


def search_like(request: Request) -> Response:
    state: PageState = request.app.state.page
    rel = request.query_params.get("path", "")
    safe_file(state, rel)
    k, spec = get_k(request), get_filter(request)

    def run() -> list[tuple[str, float]]:
        row = state.retriever.index.row_of(rel)  # read under the lock: a refresh may renumber the rows
        return state.retriever.search_embeddings(state.retriever.index.embeddings[row:row + 1], k, state.use_faiss,
                                                 state.allowed(*spec))[0]

    return timed(state, run, like=rel, kind="audio")


async def search_upload(request: Request) -> Response:
    state: PageState = request.app.state.page
    k, spec = get_k(request), get_filter(request)
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
        return await run_in_threadpool(timed, state, lambda: state.retriever.search_audio(
            target, k, state.use_faiss, state.allowed(*spec)),
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
            scores = index.scores(state.retriever.embed_text([cap.text]))[0]  # (n_files,)
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
        message = f"{exc.detail}: {request.method} {request.url.path[:200]} (the API is listed in utils/search/page.py)"
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
        Route("/audio/{rel:path}", audio), *BROWSE_ROUTES,
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
