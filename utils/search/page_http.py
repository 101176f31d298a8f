"""What every route of the listening page checks in a request: ``k``, the filters, and that a path is an
indexed file inside the folder. Errors are :class:`BadRequest`, answered as ``{"error": message}``."""

from __future__ import annotations

import math
import os
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request

from utils.search.page_state import PageState

MAX_K = 100  # most results one request may ask for


class BadRequest(HTTPException):
    """A 4xx answered as ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(status_code=status, detail=message)


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
    if state.retriever.index.row_of(rel) is None:
        raise BadRequest(f"'{rel[:200]}' is not an indexed file", 404)
    folder = os.path.realpath(state.retriever.index.folder)
    real = os.path.realpath(os.path.join(folder, rel))
    if os.path.commonpath([folder, real]) != folder:
        raise BadRequest(f"'{rel[:200]}' is a link to a file outside the indexed folder; it is not served", 403)
    if not os.path.isfile(real):
        raise BadRequest(f"'{rel[:200]}' is gone from the folder; refresh the index", 404)
    return Path(real)


def get_seconds(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number of seconds, got '{raw[:20]}'") from None
    if not math.isfinite(value) or value < 0:
        raise BadRequest(f"{name} must be a number of seconds >= 0, got '{raw[:20]}'")
    return value


def get_filter(request: Request) -> tuple[str, float | None, float | None]:
    """The filters of the request: ``folder=`` a subfolder (relative, '' for all), ``min_s=`` / ``max_s=``
    seconds; :meth:`PageState.allowed` turns them into rows."""
    folder = request.query_params.get("folder", "").strip().strip("/")
    if folder.startswith(".") and ".." in folder.split("/"):
        raise BadRequest(f"folder must be a subfolder of the index, got '{folder[:200]}'")
    low, high = get_seconds(request, "min_s"), get_seconds(request, "max_s")
    if low is not None and high is not None and low > high:
        raise BadRequest(f"min_s ({low:g}) is above max_s ({high:g})")
    return folder, low, high
