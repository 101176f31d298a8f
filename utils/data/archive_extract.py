"""Unpacking a 7z archive of wav files into a split folder with py7zr: all of it, or nothing under the name.

    wavs = archive_wavs(archive)                   # member path -> uncompressed bytes (the archive's listing)
    extract_wavs(archive, dataset_dir / "development", wavs)

The archive is extracted into a hidden sibling ``.<folder>.extracting``; the wav files found there must be
exactly the listing (same paths, same sizes) before their folder is renamed onto the split folder. A kill
during extraction leaves only the hidden folder, which the next extraction deletes first; stage 1 never sees a
partial split. Callers hold the download lock (:func:`utils.data.download.download_lock`), so no other
process writes there.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path, PurePosixPath

import py7zr
from py7zr.callbacks import ExtractCallback
from tqdm import tqdm

from utils.base.errors import DataError

AUDIO_SUFFIX = ".wav"
# what py7zr raises on a damaged or truncated archive (ArchiveError covers Bad7zFile, CrcError, ...), and a full disk
READ_ERRORS = (py7zr.exceptions.ArchiveError, py7zr.exceptions.AbsolutePathError, OSError, EOFError, ValueError,
               KeyError)


def extracting_path(dest: Path) -> Path:
    """The hidden folder an extraction into ``dest`` works in."""
    return dest.with_name(f".{dest.name}.extracting")


def archive_wavs(archive: Path) -> dict[str, int]:
    """``{member path: uncompressed bytes}`` of the archive's wav files, all in one folder of the archive.

    Raises DataError when the archive cannot be read, holds no wav, holds an unsafe path (absolute or
    ``..``), or spreads its wavs over several folders.
    """
    try:
        with py7zr.SevenZipFile(archive, "r") as z:
            members = z.list()
    except READ_ERRORS as err:
        raise DataError(f"{archive} is not a readable 7z archive ({type(err).__name__}: {err}); delete it and "
                        "rerun to fetch it again") from err
    wavs = {m.filename: m.uncompressed for m in members
            if not m.is_directory and m.filename.lower().endswith(AUDIO_SUFFIX)}
    unsafe = [n for n in wavs if n.startswith("/") or ".." in PurePosixPath(n).parts]
    if unsafe:
        raise DataError(f"{archive} holds unsafe member paths (e.g. '{unsafe[0]}'); it is not a Clotho archive")
    if not wavs:
        raise DataError(f"{archive} holds no {AUDIO_SUFFIX} file; it is not a Clotho audio archive")
    folders = sorted({str(PurePosixPath(n).parent) for n in wavs})
    if len(folders) > 1:
        raise DataError(f"{archive} keeps its wav files in {len(folders)} folders ({folders[:3]}), not in one; "
                        "unpack it by hand into the split folder")
    return wavs


class _Progress(ExtractCallback):
    """py7zr callback: one tqdm bar over the uncompressed bytes."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar

    def report_start_preparation(self) -> None:
        pass

    def report_start(self, processing_file_path: str, processing_bytes: str) -> None:
        pass

    def report_update(self, decompressed_bytes: str) -> None:
        pass

    def report_end(self, processing_file_path: str, wrote_bytes: str) -> None:
        self.bar.update(int(wrote_bytes))

    def report_warning(self, message: str) -> None:
        pass

    def report_postprocess(self) -> None:
        pass


def found_wavs(root: Path) -> dict[str, int]:
    """``{path relative to root (posix): bytes}`` of every wav file under ``root``."""
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*")
            if p.is_file() and p.name.lower().endswith(AUDIO_SUFFIX)}


def compare_listing(archive: Path, wavs: dict[str, int], found: dict[str, int]) -> str | None:
    """``None`` when the extracted files are the listing, else what differs (counts and an example)."""
    missing, extra = sorted(set(wavs) - set(found)), sorted(set(found) - set(wavs))
    resized = sorted(n for n in set(wavs) & set(found) if wavs[n] != found[n])
    if not (missing or extra or resized):
        return None
    example = (missing or extra or resized)[0]
    return (f"extracting {archive.name} gave {len(found)} wav files for {len(wavs)} listed: {len(missing)} "
            f"missing, {len(extra)} unexpected, {len(resized)} of another size (e.g. '{example}')")


def extract_wavs(archive: Path, dest: Path, wavs: dict[str, int], progress: bool = True) -> int:
    """Extract ``archive`` (listing ``wavs``, from :func:`archive_wavs`) so that its wav folder becomes
    ``dest``; returns the number of wav files. ``dest`` must not exist."""
    if dest.exists():
        raise DataError(f"{dest} already exists; move it aside (e.g. mv '{dest}' '{dest}.old') and rerun")
    work = extracting_path(dest)
    if work.exists():
        shutil.rmtree(work)  # left by a killed extraction
    work.mkdir(parents=True)
    total = sum(wavs.values())
    try:
        with py7zr.SevenZipFile(archive, "r") as z, tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"extract {archive.name}",
                disable=not progress, file=sys.stderr) as bar:
            z.extractall(path=work, callback=_Progress(bar))
    except READ_ERRORS as err:
        shutil.rmtree(work, ignore_errors=True)
        raise DataError(f"extracting {archive} failed ({type(err).__name__}: {err}); delete the archive and "
                        "rerun to fetch it again (or free disk space if that was the cause)") from err
    problem = compare_listing(archive, wavs, found_wavs(work))
    if problem:
        shutil.rmtree(work, ignore_errors=True)
        raise DataError(f"{problem}; nothing was put at {dest}. Delete {archive.name} and rerun to fetch it again")
    folder = work / str(PurePosixPath(next(iter(wavs))).parent)
    os.rename(folder, dest)
    shutil.rmtree(work, ignore_errors=True)
    return len(wavs)
