"""The listening page's routes for browsing a large index without sending every path to the browser:

    GET /thumb/REL            a small spectrogram PNG of an indexed file (made on first request, cached on disk)
    GET /api/folders          the subfolders holding indexed files, with counts (for the folder filter)
    GET /api/files?folder=F&offset=0&limit=100&min_s=&max_s=   a page of the indexed files, with the total

Thumbnails are served by their own route, outside the model lock, so a search never waits for one.
"""

from __future__ import annotations

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from utils.data.audio import AudioReadError
from utils.search.page_http import BadRequest, get_filter, safe_file
from utils.search.page_state import PageState

MAX_PAGE = 500  # files one /api/files request may list
MAX_FOLDERS = 1000  # subfolders /api/folders lists (the largest first)


async def thumbnail(request: Request) -> Response:
    state: PageState = request.app.state.page
    rel = request.path_params["rel"]
    real = safe_file(state, rel)
    index = state.retriever.index
    row = index.row_of(rel)
    try:
        png = await run_in_threadpool(state.thumbs.get, real, rel, int(index.mtimes[row]), int(index.sizes[row]))
    except AudioReadError as err:
        raise BadRequest(f"no thumbnail: {err}", 422) from err
    return FileResponse(png, media_type="image/png", headers={"Cache-Control": "max-age=86400"})


def folders(request: Request) -> Response:
    state: PageState = request.app.state.page
    names, codes = state.folder_rows()
    counts = np.bincount(codes, minlength=len(names))
    order = np.argsort(-counts, kind="stable")[:MAX_FOLDERS]
    return JSONResponse({"folders": [{"folder": names[i], "files": int(counts[i])} for i in order],
                         "total": len(names)})


def get_int(request: Request, name: str, default: int, most: int) -> int:
    raw = request.query_params.get(name, str(default))
    if not raw.isdigit() or int(raw) > most:
        raise BadRequest(f"{name} must be a whole number from 0 to {most}, got '{raw[:20]}'")
    return int(raw)


def files(request: Request) -> Response:
    state: PageState = request.app.state.page
    spec = get_filter(request)
    offset, limit = get_int(request, "offset", 0, 1 << 40), get_int(request, "limit", 100, MAX_PAGE)
    mask = state.allowed(*spec)
    rows = np.arange(len(state.retriever.index)) if mask is None else np.flatnonzero(mask)
    paths = state.retriever.index.paths
    page = [state.result(offset + i + 1, paths[int(r)], 0.0) for i, r in enumerate(rows[offset:offset + limit])]
    return JSONResponse({"total": int(len(rows)), "offset": offset, "files": page})


BROWSE_ROUTES = [Route("/thumb/{rel:path}", thumbnail), Route("/api/folders", folders), Route("/api/files", files)]
