"""Reading damaged or foreign files and writing where a kill or a read-only disk cannot lose work.

    describe_yaml_error(err)          # one line: "is not valid YAML (line 3, column 1: ...)"
    read_text_guess_encoding(path)    # str; UTF-8, UTF-16/32 (BOM or NUL pattern) or Windows-1252
    ensure_writable(folder, what)     # before the work: a PipelineError if files cannot be written there
    remove_stale_temps(folder, name)  # delete .<name>.tmp-<pid> files of killed writers
    wav_truncation(path)              # "header promises N samples, file holds M" or None
"""

from __future__ import annotations

import codecs
import os
import re
import struct
import sys
from pathlib import Path

import yaml

from utils.errors import DataError, PipelineError


def describe_yaml_error(err: Exception) -> str:
    """A YAML or decoding error as one line, for "config file X {...}"."""
    if isinstance(err, UnicodeDecodeError):
        return (f"is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                "save it as UTF-8")
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"is not valid YAML ({where}{problem})"


def load_yaml_mapping(path: Path, what: str, hint: str) -> dict:
    """``yaml.safe_load`` of a file that must hold a mapping; a damaged file is one :class:`DataError` line."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise DataError(f"{what} {path} {describe_yaml_error(err)}; {hint}") from err
    except OSError as err:
        raise DataError(f"{what} {path} cannot be read ({err.strerror or err}); {hint}") from err
    if not isinstance(raw, dict):
        raise DataError(f"{what} {path} does not hold a mapping (damaged?); {hint}")
    return raw


_BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]


def guess_encoding(data: bytes) -> str:
    """The encoding of a text file: a BOM, UTF-16 without BOM (NUL bytes at odd or even offsets), UTF-8,
    else Windows-1252 (which decodes Latin-1 text too). Raises :class:`DataError` when none fits."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name
    head = data[:4096]
    if head and head.count(0) > len(head) // 4:
        return "utf-16-le" if head[1::2].count(0) > head[0::2].count(0) else "utf-16-be"
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        data.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "latin-1"


def read_text_guess_encoding(path: str | os.PathLike, what: str = "file") -> str:
    """The text of ``path``, decoded as :func:`guess_encoding` says; a warning on stderr when it is not UTF-8."""
    path = Path(path)
    data = path.read_bytes()
    encoding = guess_encoding(data)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        raise DataError(f"{what} {path} looks like {encoding} but does not decode as it ({err.reason} at byte "
                        f"{err.start}); save it as UTF-8") from err
    if encoding not in ("utf-8", "utf-8-sig"):
        print(f"warning: {what} {path} is not UTF-8; read it as {encoding}", file=sys.stderr)
    return text.lstrip("\ufeff")


def ensure_writable(folder: str | os.PathLike, what: str) -> Path:
    """Create ``folder`` and prove a file can be written in it, before any work that would end there."""
    folder = Path(folder)
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PipelineError(f"cannot write {what} to {folder} ({err.strerror or err}); make it writable or "
                            "choose another location") from err
    return folder


def remove_stale_temps(folder: Path, target: str | None = None) -> list[Path]:
    """Delete ``.<name>.tmp-<pid>`` files left by killed processes (of ``target`` only, if given); returns them."""
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


def wav_truncation(path: str | os.PathLike) -> str | None:
    """For a RIFF/WAVE file whose ``data`` chunk is cut short: "header promises N bytes of audio, the file
    holds M". None for a complete file, another format, or a streaming header (size 0 or 0xFFFFFFFF)."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = os.fstat(stream.fileno()).st_size
            pos = 12
            while pos + 8 <= size:
                stream.seek(pos)
                chunk_id, chunk_size = struct.unpack("<4sI", stream.read(8))
                if chunk_id == b"data":
                    held = size - pos - 8
                    if chunk_size in (0, 0xFFFFFFFF) or held >= chunk_size:
                        return None
                    return f"truncated: its header promises {chunk_size} bytes of audio, the file holds {held}"
                pos += 8 + chunk_size + (chunk_size & 1)
    except OSError:
        return None
    return None
