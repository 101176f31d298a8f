"""One file over HTTP(S) with the standard library: resumable, verified, never half-written under its name.

    fetch(url, dest, Expected(md5="..."))   # writes dest.part (resumed with HTTP Range), verifies, renames

* A download grows ``<dest>.part``. A rerun after a kill, a dropped connection or a timeout asks the server for
  the rest (``Range: bytes=<size of .part>-``) and appends it; a server that ignores Range sends the whole file,
  which then replaces the part.
* Only a file whose MD5 / SHA-256 / size match :class:`Expected` is renamed to ``dest``. A mismatch moves the
  file aside (``<dest>.bad``, see :func:`move_aside`) and raises :class:`ChecksumError` with both hashes.
* Every network, HTTP or timeout failure is a :class:`DownloadError`: one line that names the URL and says the
  rerun resumes. Scripts print it as ``error: ...`` (:mod:`utils.cli`).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from utils.base.errors import DataError, PipelineError

CHUNK = 1 << 20  # bytes per read and per hash update
TIMEOUT_S = 60.0  # seconds without a byte from the server before giving up (socket timeout)
USER_AGENT = "audio-retrieval-downloader/1 (python urllib)"
RESUME = "rerun the same command to resume"
NETWORK_ERRORS = (URLError, TimeoutError, ConnectionError, http.client.HTTPException)


class DownloadError(PipelineError):
    """The network, the server or a timeout stopped a download; what was fetched is kept for the rerun."""


class ChecksumError(DataError):
    """A file's bytes differ from the published checksum."""


@dataclass(frozen=True)
class Expected:
    """What a complete file must be; ``None`` fields are not checked."""

    md5: str | None = None
    sha256: str | None = None
    size: int | None = None  # bytes


def part_path(dest: Path) -> Path:
    """Where the download of ``dest`` grows until it is complete and verified."""
    return dest.with_name(dest.name + ".part")


def digests(path: Path, algorithms: tuple[str, ...] = ("md5",), progress: bool = False) -> dict[str, str]:
    """Hex digests of ``path``, each algorithm of ``algorithms`` in one pass over the file."""
    hashes = {a: hashlib.new(a, usedforsecurity=False) for a in algorithms}
    with open(path, "rb") as stream, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                                          desc=f"verify {path.name}", disable=not progress, leave=False) as bar:
        for chunk in iter(lambda: stream.read(CHUNK), b""):
            for h in hashes.values():
                h.update(chunk)
            bar.update(len(chunk))
    return {a: h.hexdigest() for a, h in hashes.items()}


def mismatch(path: Path, expected: Expected, progress: bool = False) -> str | None:
    """``None`` when ``path`` is what ``expected`` says, else what differs (both values, e.g. both MD5s)."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        return f"size {size:,} bytes, expected {expected.size:,}"
    wanted = {a: v.lower() for a, v in (("md5", expected.md5), ("sha256", expected.sha256)) if v}
    found = digests(path, tuple(wanted), progress) if wanted else {}
    for algorithm, value in wanted.items():
        if found[algorithm] != value:
            return f"{algorithm.upper()} {found[algorithm]}, expected {value}"
    return None


def move_aside(path: Path) -> Path:
    """Rename a bad file to ``<name>.bad`` (``.bad2``, ... when taken) so nothing uses it; returns the new path."""
    n = 1
    while (bad := path.with_name(f"{path.name}.bad{n if n > 1 else ''}")).exists():
        n += 1
    os.replace(path, bad)
    return bad


def checksum_error(path: Path, problem: str, bad: Path, hint: str) -> ChecksumError:
    return ChecksumError(f"{path.name} is not the published file ({problem}); moved it to {bad}. {hint}")


def remote_size(url: str, timeout: float = TIMEOUT_S) -> int | None:
    """The ``Content-Length`` a HEAD request reports, or ``None`` when the server does not say."""
    request = Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
    except HTTPError as err:
        if err.code in (403, 405, 501):  # HEAD not allowed: the GET will tell
            return None
        raise _http_error(url, err) from err
    except NETWORK_ERRORS as err:
        raise _network_error(url, err) from err
    return int(length) if length and length.isdigit() else None


def fetch(url: str, dest: Path, expected: Expected, timeout: float = TIMEOUT_S, progress: bool = True,
          bad_hint: str = "Rerun the same command to download it again.") -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify it, then rename it onto ``dest``.

    Raises:
        DownloadError: network, HTTP or timeout failure (``dest.part`` keeps what arrived).
        ChecksumError: the complete file is not ``expected`` (it is moved aside; ``bad_hint`` says what to do).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={start}-"} if start else {})}
    try:
        with urlopen(Request(url, headers=headers), timeout=timeout) as response:
            if start and response.status != 206:
                start = 0  # the server ignored Range: it sends the whole file, which replaces the part
            elif start:
                _check_content_range(url, response.headers.get("Content-Range", ""), start)
            length = response.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            _stream(url, response, part, start, total, progress, dest.name)
    except HTTPError as err:
        if not (err.code == 416 and start):  # 416 on a resume: the part may hold the whole file already
            raise _http_error(url, err) from err
    except NETWORK_ERRORS as err:
        raise _network_error(url, err, part) from err
    problem = mismatch(part, expected, progress)
    if problem:
        raise checksum_error(dest, problem, move_aside(part), bad_hint)
    os.replace(part, dest)
    return dest


def _stream(url: str, response: http.client.HTTPResponse, part: Path, start: int, total: int | None,
            progress: bool, name: str) -> None:
    """Append the response body to ``part`` (or rewrite it when ``start`` is 0), with a bytes/speed bar.

    Unbuffered: every chunk read is on disk (in the OS) before the next read, so a kill loses nothing fetched.
    """
    written = start
    with open(part, "ab" if start else "wb", buffering=0) as out, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
            disable=not progress, file=sys.stderr) as bar:
        while True:
            try:
                chunk = response.read1(CHUNK)
            except NETWORK_ERRORS as err:
                raise _network_error(url, err, part, written, total) from err
            if not chunk:
                break
            try:
                view = memoryview(chunk)
                while view:
                    view = view[out.write(view):]
            except OSError as err:
                raise PipelineError(f"cannot write {part} ({err.strerror or err}); free some space or make it "
                                    f"writable, then {RESUME}") from err
            written += len(chunk)
            bar.update(len(chunk))
    if total is not None and written < total:
        raise DownloadError(f"the server closed the connection after {written:,} of {total:,} bytes of {url}; "
                            f"{RESUME} (kept in {part})")


def _check_content_range(url: str, content_range: str, start: int) -> None:
    """A 206 answer must start where the part ends (``Content-Range: bytes <start>-<end>/<total>``)."""
    unit, _, span = content_range.partition(" ")
    if unit != "bytes" or not span.split("-", 1)[0].isdigit() or int(span.split("-", 1)[0]) != start:
        raise DownloadError(f"{url} answered a resume from byte {start:,} with Content-Range '{content_range}'; "
                            "delete the .part file and rerun")


def _http_error(url: str, err: HTTPError) -> DownloadError:
    if err.code == 404:
        return DownloadError(f"{url} not found (HTTP 404); check the URL (--mirror serves every file as "
                             "URL/<file name>) or fetch the file by hand and pass its folder with --from")
    return DownloadError(f"{url} answered HTTP {err.code} {err.reason}; {RESUME} later")


def _network_error(url: str, err: BaseException, part: Path | None = None, written: int | None = None,
                   total: int | None = None) -> DownloadError:
    reason = getattr(err, "reason", None) or err
    got = f" after {written:,} of {total:,} bytes" if written is not None and total else ""
    kept = f" (kept in {part})" if part is not None and part.exists() and part.stat().st_size else ""
    return DownloadError(f"download of {url} failed{got}: {type(err).__name__}: {reason}; check the connection "
                         f"(or use --mirror URL / --from DIR), then {RESUME}{kept}")
