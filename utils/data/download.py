"""Clotho v2.1 and the PANNs weights from Zenodo, verified, into exactly the layout stage 1 reads.

    download(dataset_dir, ["development", "validation", "evaluation"], Source(), panns=Path(...))

What lands in ``dataset_dir`` (``data.dataset_dir``):

    clotho_captions_<split>.csv, clotho_metadata_<split>.csv     caption and metadata tables
    <split>/*.wav                                                 the clips (retrieval: retrieval_audio/)
    archives/<archive>.7z                                         downloads; deleted once extracted (--keep-archives)
    .<folder>.complete.json                                       written once a split's folder is complete

The published names, records, MD5s and sizes are in :mod:`utils.data.clotho_files`. Every file is MD5-verified
before use (:mod:`utils.data.http_download`); archives are unpacked all or nothing (:mod:`utils.data.archive_extract`).
The released baseline weights have no published checksum: see :mod:`utils.pretrained.released_weights`.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from utils.base.errors import DataError
from utils.base.fileio import atomic_write, ensure_writable, write_text_atomic
from utils.base.text_files import read_text_guess_encoding
from utils.data.archive_extract import archive_wavs, extract_wavs
from utils.data.clotho import ClipIndex
from utils.data.clotho_files import PANNS, SPLITS, RemoteFile, SplitFiles
from utils.data.http_download import (
    TIMEOUT_S,
    ChecksumError,
    Expected,
    checksum_error,
    fetch,
    mismatch,
    move_aside,
    part_path,
    remote_size,
)

ARCHIVES = "archives"  # folder of dataset_dir holding the 7z downloads
EXTRACT_RATIO = 1.7  # wav bytes per archive byte (about 7.1 GiB of wavs come from the 4.54 GB development archive)



def read_checksums(path: Path) -> dict[str, str]:
    """An ``md5sum`` file (``<md5>  <name>`` or ``<md5> *<name>`` lines; blank and ``#`` lines skipped) ->
    ``{name: md5}``."""
    if not path.is_file():
        raise DataError(f"checksums file not found: {path}")
    sums = {}
    for number, line in enumerate(read_text_guess_encoding(path, "checksums file").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().removeprefix("*")
        if len(digest) != 32 or any(c not in "0123456789abcdefABCDEF" for c in digest) or not name:
            raise DataError(f"{path} line {number} is not '<md5>  <file name>': {line.strip()[:80]!r}")
        sums[name] = digest.lower()
    return sums


@dataclass
class Source:
    """Where files come from: Zenodo, ``mirror`` (``URL/<file name>``) or ``from_dir``, and the hashes to expect."""

    mirror: str | None = None
    from_dir: Path | None = None
    md5_overrides: dict[str, str] = field(default_factory=dict)  # --checksums: name -> md5
    timeout: float = TIMEOUT_S
    progress: bool = True

    def url(self, f: RemoteFile) -> str:
        return f"{self.mirror.rstrip('/')}/{quote(f.name)}" if self.mirror else f.url

    def expected(self, f: RemoteFile) -> Expected:
        if f.name in self.md5_overrides:  # another file than the published one: only the given MD5 applies
            return Expected(md5=self.md5_overrides[f.name])
        return Expected(md5=f.md5, sha256=f.sha256, size=f.size)

    def given(self, f: RemoteFile) -> Path | None:
        """``from_dir/<name>`` when it exists."""
        path = self.from_dir / f.name if self.from_dir else None
        return path if path is not None and path.is_file() else None


def obtain(f: RemoteFile, dest: Path, source: Source) -> Path:
    """A verified copy of ``f``: ``--from DIR``'s (used in place), ``dest`` when it is already good, else fetched
    to ``dest``. A bad file in ``dest`` is moved aside; a bad ``--from`` file is left alone (it is yours)."""
    expected = source.expected(f)
    given = source.given(f)
    if given is not None:
        problem = mismatch(given, expected, source.progress)
        if problem:
            raise ChecksumError(f"{given} (from --from) is not the published {f.name} ({problem}); it is left in "
                                "place. Replace it with a good copy, or remove it to have it downloaded")
        return given
    if dest.is_file():
        problem = mismatch(dest, expected, source.progress)
        if problem is None:
            return dest  # complete and verified: not fetched again
        raise checksum_error(dest, problem, move_aside(dest), "Rerun the same command to download it again.")
    return fetch(source.url(f), dest, expected, source.timeout, source.progress)


def obtain_table(f: RemoteFile, dataset_dir: Path, source: Source) -> Path:
    """A verified CSV at ``dataset_dir/<name>`` (copied there when it comes from ``--from``)."""
    dest = dataset_dir / f.name
    path = obtain(f, dest, source)
    if path != dest:
        with atomic_write(dest) as tmp:
            shutil.copyfile(path, tmp)
    return dest


# --------------------------------------------------------------------------------------------
# Splits: done, adopted, or extracted
# --------------------------------------------------------------------------------------------


def marker(dataset_dir: Path, files: SplitFiles) -> Path:
    """Written once ``dataset_dir/<folder>`` is complete; its absence means the split is still to do."""
    return dataset_dir / f".{files.folder}.complete.json"


def split_done(dataset_dir: Path, files: SplitFiles) -> bool:
    return marker(dataset_dir, files).is_file() and (dataset_dir / files.folder).is_dir()


def listed_names(path: Path) -> list[str]:
    """The ``file_name`` column of a Clotho CSV."""
    rows = list(csv.DictReader(io.StringIO(read_text_guess_encoding(path, "metadata file"), newline="")))
    if rows and "file_name" not in rows[0]:
        raise DataError(f"{path} has no file_name column; it is not a Clotho metadata file")
    return [r["file_name"] for r in rows]


def adopt_folder(dataset_dir: Path, files: SplitFiles) -> int:
    """Accept a split folder that exists without a marker (unpacked by hand, or killed just before the marker)
    when it holds every clip its metadata CSV lists and no other; returns the number of clips."""
    folder = dataset_dir / files.folder
    names = listed_names(dataset_dir / files.listing)
    index = ClipIndex.scan(folder)
    missing = [n for n in names if index.find(n) is None]
    if missing or len(index) != len(names):
        example = f", e.g. '{missing[0]}'" if missing else ""
        raise DataError(f"{folder} exists but is not the complete split: {len(index)} audio files for the "
                        f"{len(names)} clips of {files.listing} ({len(missing)} missing{example}); move it aside "
                        f"(mv '{folder}' '{folder}.old') and rerun to extract it afresh")
    return len(names)


def prepare_split(dataset_dir: Path, split: str, source: Source, keep_archives: bool) -> str:
    """Tables, then the clips of one split; returns a one-line report."""
    files = SPLITS[split]
    for table in files.tables:
        obtain_table(table, dataset_dir, source)
    done = marker(dataset_dir, files)
    if split_done(dataset_dir, files):
        return f"[{split}] {files.folder}/ is complete ({done.name}); skipped"
    if (dataset_dir / files.folder).is_dir():
        n = adopt_folder(dataset_dir, files)
        write_text_atomic(done, json.dumps({"clips": n, "adopted": True}) + "\n")
        return f"[{split}] {files.folder}/ already holds all {n} clips of {files.listing}; kept"
    archive = obtain(files.archive, dataset_dir / ARCHIVES / files.archive.name, source)
    wavs = archive_wavs(archive)
    check_free_space({dataset_dir: sum(wavs.values())}, f"extracting {archive.name}")
    n = extract_wavs(archive, dataset_dir / files.folder, wavs, source.progress)
    write_text_atomic(done, json.dumps({"clips": n, "archive": files.archive.name,
                                        "md5": source.expected(files.archive).md5}) + "\n")
    if not keep_archives and archive.parent == dataset_dir / ARCHIVES:
        archive.unlink()
    return f"[{split}] extracted {n} clips into {dataset_dir / files.folder}"


# --------------------------------------------------------------------------------------------
# Disk space, the lock, the whole download
# --------------------------------------------------------------------------------------------


def human_bytes(n: int) -> str:
    """``4.5 GB``, ``12.3 MB``, ``8.0 kB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_free_space(needs: dict[Path, int], what: str) -> list[str]:
    """Raise DataError when a disk lacks the bytes ``needs`` puts on it (folders summed per disk); returns a
    line per disk saying what is needed and free."""
    disks: dict[int, tuple[Path, int]] = {}
    for folder, n in needs.items():
        root = _existing(folder)
        first, total = disks.get(root.stat().st_dev, (root, 0))
        disks[root.stat().st_dev] = (first, total + n)
    lines = []
    for root, need in disks.values():
        free = shutil.disk_usage(root).free
        if need > free:
            raise DataError(f"not enough free disk space for {what} at {root}: needs about {human_bytes(need)}, "
                            f"{human_bytes(free)} free; free some space or choose another folder (data.dataset_dir)")
        lines.append(f"{what}: needs about {human_bytes(need)} at {root} ({human_bytes(free)} free)")
    return lines


def download_size(f: RemoteFile, dest: Path, source: Source) -> int:
    """Bytes still to fetch for ``f`` (0 when it is in ``--from DIR`` or already at ``dest``)."""
    if source.given(f) is not None or dest.is_file():
        return 0
    size = remote_size(source.url(f), source.timeout) or f.approx_size
    part = part_path(dest)
    return max(0, size - (part.stat().st_size if part.exists() else 0))


def space_needed(dataset_dir: Path, splits: list[str], source: Source, keep_archives: bool,
                 extra: list[tuple[RemoteFile, Path]]) -> dict[Path, int]:
    """The most bytes each target folder holds at once during the download: splits are done in turn, and
    (without ``keep_archives``) a split's archive is deleted once extracted, before the next is fetched."""
    kept = peak = 0  # bytes that stay (tables, wavs, kept archives); the most on disk at any moment
    for split in splits:
        files = SPLITS[split]
        kept += sum(download_size(t, dataset_dir / t.name, source) for t in files.tables)
        if split_done(dataset_dir, files) or (dataset_dir / files.folder).is_dir():
            continue
        archive = dataset_dir / ARCHIVES / files.archive.name
        fetched = download_size(files.archive, archive, source)
        have = source.given(files.archive) or (archive if archive.is_file() else None)
        wavs = int((have.stat().st_size if have else fetched) * EXTRACT_RATIO)
        peak = max(peak, kept + fetched + wavs)
        kept += wavs + (fetched if keep_archives else 0)
    needs = {dataset_dir: max(peak, kept)}
    for f, dest in extra:
        needs[dest.parent] = needs.get(dest.parent, 0) + download_size(f, dest, source)
    return needs


@contextlib.contextmanager
def download_lock(dataset_dir: Path) -> Iterator[None]:
    """One download at a time into ``dataset_dir`` (released by the OS even when the process is killed)."""
    ensure_writable(dataset_dir, "the Clotho download")
    with open(dataset_dir / ".download.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise DataError(f"another download into {dataset_dir} is running; wait for it to end") from err
        yield


def download(dataset_dir: Path, splits: list[str], source: Source, keep_archives: bool = False,
             panns: Path | None = None, extra: list[tuple[RemoteFile, Path]] | None = None) -> list[str]:
    """Fetch, verify and unpack ``splits`` into ``dataset_dir``, and the PANNs checkpoint to ``panns`` when given;
    ``extra`` files only count in the free-space check. Returns the report lines (also printed)."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise DataError(f"unknown split(s) {unknown}; choose from {list(SPLITS)}")
    weights = [(PANNS, panns)] if panns else []
    with download_lock(dataset_dir):
        report = check_free_space(space_needed(dataset_dir, splits, source, keep_archives, weights + (extra or [])),
                                  "this download")
        print("\n".join(report))
        for split in splits:
            report.append(prepare_split(dataset_dir, split, source, keep_archives))
            print(report[-1])
        if panns:
            report.append(f"{PANNS.name}: verified at {obtain(PANNS, panns, source)}")
            print(report[-1])
    return report
