"""File I/O shared by every layer: atomic writes and reading torch files safely.

A base module (imports only :mod:`utils.base.errors` and torch), so ``models/`` may use it too.

* :func:`atomic_write` is the one temp-file-then-``os.replace`` helper: a killed writer leaves only a
  ``.<name>.tmp-<pid>`` sibling, never a torn file.
* :func:`remove_stale_temps` deletes those siblings once their writer is dead; :func:`ensure_writable` proves
  a folder takes files before the work that would end there.
* :func:`read_torch_file` is the one ``torch.load`` (always ``weights_only=True``) with its errors turned
  into a :class:`~utils.base.errors.DataError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from utils.base.errors import DataError, PipelineError

# What torch.load raises on a damaged file: truncated zip archives (RuntimeError "failed finding central
# directory", OSError "Invalid argument"), truncated legacy pickles (EOFError, RuntimeError "unexpected EOF"),
# other bytes (UnpicklingError, KeyError from the legacy reader) and broken archives (BadZipFile).
TORCH_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError, zipfile.BadZipFile)


def atomic_path(path: Path) -> Path:
    """A temporary sibling of ``path``: ``.<name>.tmp-<pid>``; write there, then ``os.replace`` it onto ``path``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_temps(folder: Path, target: str | None = None) -> list[Path]:
    """Delete the :func:`atomic_path` files (``.<name>.tmp-<pid>``) that killed writers left in ``folder``
    (of ``target`` only, if given); returns them."""
    name = re.escape(target) if target else ".+"
    pattern = re.compile(rf"^\.{name}\.tmp-(\d+)$")
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = pattern.match(path.name)
        if match and not _pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier, interrupted call in this very process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_writable(folder: str | os.PathLike, what: str) -> Path:
    """Create ``folder`` and prove a file can be written in it, before any work that would end there."""
    folder = Path(folder)
    probe = atomic_path(folder / ".write-test")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PipelineError(f"cannot write {what} to {folder} ({err.strerror or err}); make it writable or "
                            "choose another location") from err
    return folder


def fsync_path(path: Path) -> None:
    """Flush a file (or a directory's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path``, on error it is removed.

    ``durable=True`` also fsyncs the file before the rename and the folder after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_torch_file(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically: a kill never leaves a truncated checkpoint."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def read_torch_file(path: str | os.PathLike, missing_hint: str, damaged_hint: str = "re-download or remake it") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with a :class:`DataError` naming the file
    when it is missing (``missing_hint`` says how to get it), corrupt or truncated (``damaged_hint`` says what
    to do), or holds Python objects that ``weights_only`` refuses."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found; {missing_hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            raise DataError(
                f"{path} is readable but holds Python objects other than tensors, which torch.load(weights_only=True) "
                f"refuses ({first_line_with(str(err), 'Unsupported global')}). Loading it could run code hidden in it; "
                "if you made it yourself and trust it, re-save only its tensors (a dict of state dicts)"
            ) from err
        raise DataError(f"{path} is corrupt or truncated (not a readable torch file); {damaged_hint}") from err
    except TORCH_LOAD_ERRORS as err:
        raise DataError(
            f"{path} is corrupt or truncated ({type(err).__name__}: {first_line_with(str(err), '')}); {damaged_hint}"
        ) from err


def first_line_with(text: str, needle: str) -> str:
    """The first line of ``text`` containing ``needle`` (stripped, at most 200 characters)."""
    for line in text.splitlines():
        if needle in line:
            return line.strip()[:200]
    return text.strip()[:200]
