"""Text-to-audio retrieval with a trained run: embed clips and captions, index a folder, search it.

    r = Retriever.from_run("runs/baseline", checkpoint="best", device="auto")
    r.embed_audio(["a.wav", (y, sr), logmels])   # -> (n, E) float32 unit vectors
    r.embed_text(["a dog barks"])                 # -> (n, E) float32 unit vectors
    r.index_folder("my_sounds/")                  # features + embeddings of every audio file, cached
    r.search("a dog barks while cars pass", k=10) # -> [(path, score), ...], best first

The folder index is cached at ``<run>/search_index/<sha1 of the absolute folder>_<checkpoint>.npz`` (see
:class:`FolderIndex` for its arrays). Later calls re-embed only files that were added or changed (mtime or
size) and drop removed ones; a new checkpoint or feature setting rebuilds it. Unreadable files are skipped
with a warning on stderr and remembered, so they are not retried until they change.

Search is exact by default (``scores = E_audio @ q``, ``np.argpartition`` then a stable sort: ties keep the
lower index first, as :mod:`utils.metrics` ranks them). ``use_faiss=True`` uses a ``faiss.IndexFlatIP``
(optional dependency, imported only then).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.audio_encoders import TORCH_LOAD_ERRORS
from models.core import DualEncoderModel, build_model
from utils.config import Config, FeatureConf, from_dict
from utils.errors import DataError, PipelineError
from utils.inference import amp_dtype, embed_audio, embed_text, resolve_device

CHECKPOINTS = ("best", "last")
# What soundfile (libsndfile) or librosa (audioread / ffmpeg) can decode; the same list as stage 1's.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".m4a", ".opus")
INDEX_VERSION = 1  # bump when the cached index format or the feature code changes
CHUNK_FILES = 32  # files whose features are held in memory at once while indexing
TEXT_VECTOR_BATCH = 65536  # SBERT vectors per text-branch call (a linear layer: one call in practice)
FEW_QUERIES = 16  # up to this many captions per search run single-threaded on the CPU (see few_threads)

AudioItem = str | os.PathLike | tuple | np.ndarray | torch.Tensor  # path, (y, sr), or (time, mels) log-mels


# --------------------------------------------------------------------------------------------
# Loading a trained run
# --------------------------------------------------------------------------------------------


def checkpoint_path(run_dir: str | os.PathLike, checkpoint: str = "best") -> Path:
    """``<run_dir>/checkpoints/<checkpoint>.pt``; raises :class:`PipelineError` when it is missing."""
    if checkpoint not in CHECKPOINTS:
        raise PipelineError(f"checkpoint must be one of {list(CHECKPOINTS)}, got '{checkpoint}'")
    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        where = "is not a directory" if not run_dir.is_dir() else f"has no checkpoints/{checkpoint}.pt"
        raise PipelineError(
            f"no checkpoints/{checkpoint}.pt in {run_dir} ({run_dir} {where}): train first with "
            f"python main.py --conf CONF --set run.dir={run_dir.parent} --set run.name={run_dir.name}"
        )
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint written by ``main.py``, loaded with ``weights_only=True``.

    Its RNG state is stored as tensors and plain values, so no allow-list is needed.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            raise DataError(f"{path} is corrupt or truncated; train again or use the other checkpoint "
                            "(--checkpoint best|last)") from err
        detail = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), "")
        raise DataError(f"{path} holds Python objects other than tensors and numbers ({detail[:200]}); "
                        "it was not written by main.py") from err
    except TORCH_LOAD_ERRORS as err:
        raise DataError(f"{path} is corrupt or truncated ({type(err).__name__}: {str(err)[:200]}); "
                        "train again or use the other checkpoint (--checkpoint best|last)") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise DataError(f"{path} is not a checkpoint written by main.py (no 'model' state dict)")
    return ckpt


@dataclass
class LoadedRun:
    """A trained model with the config it was trained with."""

    model: DualEncoderModel  # in eval mode, on ``device``
    conf: Config  # the run's resolved config (config.yaml, else the checkpoint's copy)
    run_dir: Path
    checkpoint: str  # 'best' or 'last'
    checkpoint_file: Path
    text_dim: int | None  # SBERT vector size the text projection expects (None for a fine-tuned text model)
    epoch: int | None
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype (train.amp), None = float32


def load_run(run_dir: str | os.PathLike, checkpoint: str = "best", device: str | torch.device = "auto") -> LoadedRun:
    """Load ``<run_dir>/config.yaml`` and ``checkpoints/<checkpoint>.pt`` into an eval-mode model.

    Raises :class:`PipelineError` naming the file when the run has no checkpoint, or when the checkpoint
    does not fit the config (e.g. another width or text model).
    """
    from utils.train_utils import load_run_config

    run_dir = Path(run_dir)
    path = checkpoint_path(run_dir, checkpoint)
    ckpt = load_checkpoint(path)
    if (run_dir / "config.yaml").is_file():
        conf = load_run_config(run_dir)
    elif isinstance(ckpt.get("config"), dict):
        conf = from_dict(ckpt["config"])
    else:
        raise PipelineError(f"{run_dir} has neither config.yaml nor a config in {path}")
    dev = as_device(device)
    text_dim = ckpt.get("text_dim")
    try:
        model = build_model(conf, text_dim, load_prior=False)
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError) as err:
        raise PipelineError(
            f"{path} does not fit {run_dir / 'config.yaml'} ({str(err).splitlines()[0][:300]}); "
            "was config.yaml edited after training?"
        ) from err
    model.to(dev).eval()
    epoch = ckpt.get("epoch", (ckpt.get("state") or {}).get("epoch"))
    return LoadedRun(model, conf, run_dir, checkpoint, path, text_dim, epoch, dev, amp_dtype(conf.train.amp, dev))


def as_device(spec: str | torch.device) -> torch.device:
    """``'auto'``/``'cpu'``/``'cuda[:N]'`` -> device; an unavailable GPU is a :class:`PipelineError`."""
    if isinstance(spec, torch.device):
        return spec
    try:
        return resolve_device(spec)
    except RuntimeError as err:
        raise PipelineError(str(err)) from err


# --------------------------------------------------------------------------------------------
# Features and top-k
# --------------------------------------------------------------------------------------------


def clip_features(item: AudioItem, features: FeatureConf) -> np.ndarray:
    """Stage 2's log-mels of one clip: ``(time, n_mels)`` float32.

    Args:
        item: an audio file path (any format and sample rate soundfile / librosa read), a ``(y, sr)``
            tuple (mono or ``(samples, channels)`` waveform), or log-mels ``(time, n_mels)`` used as they are.
    """
    from utils.audio import load_audio
    from utils.logmel import logmel

    if isinstance(item, (str, os.PathLike)):
        y, sr = load_audio(item)
    elif isinstance(item, tuple) and len(item) == 2:
        y, sr = np.asarray(item[0], dtype=np.float32), int(item[1])
        if y.ndim == 2:
            y = y.mean(axis=1)  # (samples, channels) -> mono, as load_audio does
    else:
        mel = np.asarray(item.cpu() if isinstance(item, torch.Tensor) else item, dtype=np.float32)
        if mel.ndim != 2 or mel.shape[1] != features.n_mels:
            raise ValueError(f"expected a path, a (y, sr) tuple or log-mels (time, {features.n_mels}); "
                             f"got an array of shape {mel.shape}")
        return mel
    return logmel(y, sr, features.n_mels, features.win_sec, features.hop_sec)  # (time, n_mels)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first; equal scores keep the lower index first.

    Args:
        scores: ``(n,)`` or ``(n_queries, n)``.

    Returns:
        ``(min(k, n),)`` or ``(n_queries, min(k, n))`` int64. Same order as a stable descending argsort
        (and as :func:`utils.metrics.relevant_ranks`), in O(n) per query plus O(k log k).
    """
    scores = np.asarray(scores)
    if scores.ndim == 1:
        return top_k(scores[None, :], k)[0]
    n = scores.shape[1]
    k = min(int(k), n)
    if k <= 0:
        return np.empty((scores.shape[0], 0), dtype=np.int64)
    if k == n:
        return np.argsort(-scores, axis=1, kind="stable")
    cand = np.sort(np.argpartition(-scores, k - 1, axis=1)[:, :k], axis=1)  # (q, k) the k best, by index
    cand_scores = np.take_along_axis(scores, cand, axis=1)
    out = np.take_along_axis(cand, np.argsort(-cand_scores, axis=1, kind="stable"), axis=1)
    # Rows where the k-th score is tied with an item left out: pick the lowest indices among the ties.
    kth = cand_scores.min(axis=1)
    tied = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k)
    for q in tied:
        out[q] = np.argsort(-scores[q], kind="stable")[:k]
    return out.astype(np.int64)


# --------------------------------------------------------------------------------------------
# The folder index
# --------------------------------------------------------------------------------------------


def scan_audio_files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every audio file under ``folder`` (recursively; hidden files and folders left out):
    ``{relative posix path: (mtime_ns, size)}``, sorted by path. Plain strings, no pathlib: ~10 ms for 5000 files."""
    found: dict[str, tuple[int, int]] = {}
    stack = [(str(folder), "")]  # (absolute dir, its relative posix prefix)
    while stack:
        current, prefix = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as err:
            warn(f"cannot list {current}: {err}")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    stack.append((entry.path, f"{prefix}{entry.name}/"))
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in AUDIO_EXTENSIONS:
                    st = entry.stat()
                    found[prefix + entry.name] = (st.st_mtime_ns, st.st_size)
            except OSError as err:
                warn(f"cannot read {entry.path}: {err}")
    return dict(sorted(found.items()))


@dataclass
class FolderIndex:
    """Audio embeddings of one folder, aligned by row. Saved as an ``.npz`` with these arrays:

    ``folder`` (absolute path), ``model_key`` (checkpoint file + feature settings it was made with),
    ``paths`` (relative posix paths, sorted), ``mtimes`` (int64 ns), ``sizes`` (int64 bytes),
    ``embeddings`` (float32 ``(n_files, E)`` unit vectors), and ``skipped_paths`` / ``skipped_mtimes`` /
    ``skipped_sizes`` / ``skipped_reasons`` for unreadable files.
    """

    folder: Path
    model_key: str
    paths: list[str]
    mtimes: np.ndarray  # (n,) int64
    sizes: np.ndarray  # (n,) int64
    embeddings: np.ndarray  # (n, E) float32
    skipped: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # path -> (mtime_ns, size, reason)
    _faiss: object = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    def abs_paths(self, rows: Sequence[int]) -> list[str]:
        return [str(self.folder / self.paths[j]) for j in rows]

    def save(self, path: Path) -> None:
        """Write atomically (temp file + ``os.replace``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        skipped = sorted(self.skipped.items())
        with open(tmp, "wb") as stream:
            np.savez(
                stream, version=np.int64(INDEX_VERSION), folder=np.str_(str(self.folder)),
                model_key=np.str_(self.model_key), paths=np.array(self.paths, dtype=str),
                mtimes=np.asarray(self.mtimes, np.int64), sizes=np.asarray(self.sizes, np.int64),
                embeddings=np.asarray(self.embeddings, np.float32),
                skipped_paths=np.array([p for p, _ in skipped], dtype=str),
                skipped_mtimes=np.array([v[0] for _, v in skipped], np.int64),
                skipped_sizes=np.array([v[1] for _, v in skipped], np.int64),
                skipped_reasons=np.array([v[2] for _, v in skipped], dtype=str),
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> FolderIndex | None:
        """The cached index, or None when it is missing, unreadable or of another format version."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["version"]) != INDEX_VERSION:
                    return None
                skipped = {str(p): (int(m), int(s), str(r)) for p, m, s, r in zip(
                    z["skipped_paths"], z["skipped_mtimes"], z["skipped_sizes"], z["skipped_reasons"], strict=True)}
                return cls(Path(str(z["folder"])), str(z["model_key"]), [str(p) for p in z["paths"]],
                           z["mtimes"], z["sizes"], z["embeddings"], skipped)
        except (OSError, KeyError, ValueError) as err:
            if path.exists():
                warn(f"ignoring the unreadable search index {path} ({err}); rebuilding it")
            return None

    def faiss_index(self):
        """A ``faiss.IndexFlatIP`` over the embeddings (built once per loaded index)."""
        if self._faiss is None:
            faiss = import_faiss()
            index = faiss.IndexFlatIP(self.embeddings.shape[1])
            index.add(np.ascontiguousarray(self.embeddings, dtype=np.float32))
            self._faiss = index
        return self._faiss


@dataclass
class IndexUpdate:
    """What :meth:`Retriever.index_folder` did."""

    reused: int = 0  # files whose cached embedding was kept
    added: list[str] = field(default_factory=list)  # new files embedded
    changed: list[str] = field(default_factory=list)  # files re-embedded because mtime or size changed
    removed: list[str] = field(default_factory=list)  # files gone from the folder
    skipped: list[str] = field(default_factory=list)  # files found unreadable in this update
    missing: list[str] = field(default_factory=list)  # index_files: listed files that do not exist
    rebuilt: bool = False  # the cache was missing or made with another checkpoint / feature settings

    @property
    def embedded(self) -> list[str]:
        return self.added + self.changed

    def summary(self) -> str:
        parts = [f"{self.reused} cached"] + [f"{len(v)} {name}" for name, v in
                                             (("added", self.added), ("changed", self.changed),
                                              ("removed", self.removed), ("unreadable", self.skipped)) if v]
        return ", ".join(parts)


def import_faiss():
    """``faiss``, or a :class:`PipelineError` saying how to get it."""
    try:
        import faiss
    except ImportError as err:
        raise PipelineError("FAISS search was requested but the faiss package is not installed: "
                            "pip install faiss-cpu (or faiss-gpu), or search without --faiss") from err
    return faiss


@contextlib.contextmanager
def few_threads(active: bool = True):
    """One intra-op thread for torch and BLAS inside the block (when ``active``).

    A query or two is too small to gain from parallel kernels, and on a shared CPU the threads' barriers make
    it ~10x slower (one caption through MiniLM: ~30 ms on one thread vs ~350 ms on two, on a busy 2-core VM).
    """
    if not active:
        yield
        return
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with librosa's scikit-learn
        threadpool_limits = None
    limits = threadpool_limits(1) if threadpool_limits else None
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        if limits is not None:
            limits.restore_original_limits()


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr that does not break a progress bar."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# The retriever
# --------------------------------------------------------------------------------------------


class Retriever:
    """A trained dual encoder plus (optionally) one indexed folder. Build it with :meth:`from_run`."""

    def __init__(self, run: LoadedRun, batch_size: int | None = None):
        self.run = run
        self.model = run.model
        self.conf = run.conf
        self.batch_size = batch_size or run.conf.eval.batch_size
        self.index: FolderIndex | None = None
        self._sbert = None

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, checkpoint: str = "best", device: str | torch.device = "auto",
                 batch_size: int | None = None) -> Retriever:
        """Load ``<run_dir>/config.yaml`` and ``checkpoints/<checkpoint>.pt`` (see :func:`load_run`)."""
        return cls(load_run(run_dir, checkpoint, device), batch_size)

    @property
    def device(self) -> torch.device:
        return self.run.device

    # ---- embeddings ------------------------------------------------------------------------

    def embed_features(self, mels: Sequence[np.ndarray], progress: bool = False) -> np.ndarray:
        """``[(time, n_mels)]`` log-mels -> ``(n, E)`` float32 unit vectors.

        Only clips of equal length share a batch, so no clip is zero-padded and each embedding is the model's
        output on that clip alone, whatever else is embedded with it (an index refresh gives the same vectors
        as a rebuild).
        """
        out = np.empty((len(mels), self.conf.model.audio_enc.out_dim), np.float32)
        lengths = np.array([m.shape[0] for m in mels], dtype=np.int64)
        groups = [np.flatnonzero(lengths == n) for n in np.unique(lengths)]
        for idx in tqdm(groups, desc="embed audio", unit="length", disable=not progress or len(groups) < 2,
                        leave=False, file=sys.stderr):
            emb = embed_audio(self.model, lambda k, idx=idx: mels[idx[k]], [int(lengths[idx[0]])] * len(idx),
                              self.batch_size, self.device, self.run.dtype)  # (len(idx), E)
            out[idx] = emb.numpy()
        return out

    def embed_audio(self, items: Sequence[AudioItem] | AudioItem, progress: bool = False) -> np.ndarray:
        """Clips -> ``(n, E)`` float32 unit vectors.

        Args:
            items: file paths (any format / sample rate), ``(y, sr)`` tuples or ``(time, n_mels)`` log-mels.
                A single path is accepted too. Unreadable files raise :class:`utils.errors.DataError`.
        """
        if isinstance(items, (str, os.PathLike)):
            items = [items]
        mels = [clip_features(item, self.conf.features) for item in items]
        return self.embed_features(mels, progress=progress)

    def embed_text(self, texts: Sequence[str] | str) -> np.ndarray:
        """Captions -> ``(n, E)`` float32 unit vectors: the run's SBERT model (``text.model``) and the
        trained projection, or the fine-tuned text encoder on the raw strings."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        check_queries(texts)
        if self.model.text_input_kind == "text":
            emb = embed_text(self.model, texts, self.conf.text.batch_size, self.device, self.run.dtype)
        else:
            vectors = self.text_vectors(texts)  # (n, D)
            if self.run.text_dim is not None and vectors.shape[1] != self.run.text_dim:
                raise PipelineError(
                    f"text.model '{self.conf.text.model}' gives {vectors.shape[1]}-d vectors but the run's text "
                    f"projection expects {self.run.text_dim}-d; was config.yaml's text.model changed after training?"
                )
            emb = embed_text(self.model, vectors, TEXT_VECTOR_BATCH, self.device, self.run.dtype)
        return emb.numpy().astype(np.float32, copy=False)

    def load_text_model(self) -> None:
        """Load the SBERT model ``conf.text.model`` now rather than on the first query (no-op when the run
        fine-tuned its own text encoder, which is part of the checkpoint)."""
        from utils import sbert

        if self._sbert is None and self.model.text_input_kind == "embedding":
            self._sbert = sbert.load_sbert(self.conf.text.model, str(self.device))  # DataError says how to get it

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        """Raw SBERT vectors ``(n, D)`` float32 from ``conf.text.model`` (loaded once)."""
        from utils import sbert

        self.load_text_model()
        vectors = sbert.encode(self._sbert, texts, self.conf.text.batch_size, str(self.device), progress=False)
        return np.asarray(vectors, dtype=np.float32)  # (n, D)

    # ---- folder index ----------------------------------------------------------------------

    def index_path(self, folder: str | os.PathLike, kind: str = "folder") -> Path:
        """Where the index of ``folder`` is cached: ``<run>/search_index/<sha1(abs folder)>_<checkpoint>.npz``
        (``kind='files'``: the index of a file list whose common folder is ``folder``, kept apart)."""
        name = str(Path(folder).resolve()) if kind == "folder" else f"{kind}:{Path(folder).resolve()}"
        key = hashlib.sha1(name.encode("utf-8")).hexdigest()
        return self.run.run_dir / "search_index" / f"{key}_{self.run.checkpoint}.npz"

    def model_key(self) -> str:
        """Identifies the embeddings: checkpoint file (path, mtime, size) and feature settings."""
        from utils.logmel import FORMULA

        st = self.run.checkpoint_file.stat()
        f = self.conf.features
        feats = json.dumps([f.n_mels, f.win_sec, f.hop_sec, FORMULA])
        return f"{self.run.checkpoint_file.resolve()}|{st.st_mtime_ns}|{st.st_size}|{feats}"

    def index_folder(self, folder: str | os.PathLike, progress: bool = True, rebuild: bool = False) -> IndexUpdate:
        """Index every audio file under ``folder`` (recursively), reusing the cache for unchanged files.

        Sets :attr:`index` (used by :meth:`search`) and returns what changed. Unreadable files are skipped
        with a warning. The cache is saved only when something changed.
        """
        folder = Path(folder).resolve()
        if not folder.is_dir():
            raise PipelineError(f"audio folder not found: {folder}")
        return self._index(folder, scan_audio_files(folder), self.index_path(folder), progress, rebuild)

    def index_files(self, files: Sequence[str | os.PathLike], progress: bool = True,
                    rebuild: bool = False) -> IndexUpdate:
        """Index a list of audio files (any folders) instead of a whole folder; see :meth:`index_folder`.

        The index's ``folder`` is the files' deepest common folder and its paths are relative to it. Listed
        files that do not exist are left out with a warning and reported in ``IndexUpdate.missing``.
        """
        present, missing = [], []
        for f in files:
            path = Path(os.path.abspath(Path(f).expanduser()))
            (present if path.is_file() else missing).append(path)
        for path in missing:
            warn(f"listed audio file not found: {path}")
        if not present:
            raise PipelineError(f"none of the {len(missing)} listed audio files exist"
                                + (f" (first: {missing[0]})" if missing else ""))
        root = Path(os.path.commonpath([str(p.parent) for p in present]))
        found = {}
        for path in present:
            st = path.stat()
            found[path.relative_to(root).as_posix()] = (st.st_mtime_ns, st.st_size)
        update = self._index(root, dict(sorted(found.items())), self.index_path(root, "files"), progress, rebuild)
        update.missing = [str(p) for p in missing]
        return update

    def _index(self, folder: Path, found: dict[str, tuple[int, int]], cache: Path, progress: bool,
               rebuild: bool) -> IndexUpdate:
        """Bring the cached index at ``cache`` up to date with ``found`` (relative path -> (mtime_ns, size))."""
        key = self.model_key()
        old = None if rebuild else FolderIndex.load(cache)
        update = IndexUpdate()
        if old is None or old.model_key != key or old.folder != folder:
            update.rebuilt = True
            old = FolderIndex(folder, key, [], np.empty(0, np.int64), np.empty(0, np.int64),
                              np.empty((0, self.conf.model.audio_enc.out_dim), np.float32))

        keep_rows, old_stat = [], {}
        for row, p in enumerate(old.paths):
            old_stat[p] = (int(old.mtimes[row]), int(old.sizes[row]))
            if found.get(p) == old_stat[p]:
                keep_rows.append(row)
        skipped = {p: v for p, v in old.skipped.items() if found.get(p) == v[:2]}
        update.reused = len(keep_rows)
        update.removed = sorted(p for p in set(old.paths) | set(old.skipped) if p not in found)
        kept = {old.paths[r] for r in keep_rows}
        todo = [p for p in found if p not in kept and p not in skipped]
        update.changed = [p for p in todo if p in old_stat or p in old.skipped]
        update.added = [p for p in todo if p not in old_stat and p not in old.skipped]

        new_paths, new_emb = self._embed_files(folder, todo, found, skipped, update, progress)
        paths = [old.paths[r] for r in keep_rows] + new_paths
        emb = np.concatenate([old.embeddings[keep_rows], new_emb]) if paths else old.embeddings[:0]
        order = np.argsort(np.array(paths, dtype=str), kind="stable") if paths else np.empty(0, np.int64)
        paths = [paths[i] for i in order]
        index = FolderIndex(folder, key, paths, np.array([found[p][0] for p in paths], np.int64),
                            np.array([found[p][1] for p in paths], np.int64),
                            np.ascontiguousarray(emb[order], dtype=np.float32), skipped)
        if update.rebuilt or update.embedded or update.removed or update.skipped:
            try:
                index.save(cache)
            except OSError as err:
                warn(f"could not save the search index to {cache} ({err}); it will be rebuilt next time")
        self.index = index
        return update

    def _embed_files(self, folder: Path, todo: list[str], found: dict[str, tuple[int, int]], skipped: dict,
                     update: IndexUpdate, progress: bool) -> tuple[list[str], np.ndarray]:
        """Features and embeddings of ``todo`` (relative paths), in chunks; unreadable ones go to ``skipped``."""
        done, chunks = [], []
        bar = tqdm(total=len(todo), desc="index audio", unit="file", disable=not progress or not todo,
                   file=sys.stderr)
        for start in range(0, len(todo), CHUNK_FILES):
            names, mels = [], []
            for rel in todo[start:start + CHUNK_FILES]:
                path = folder / rel
                try:
                    mels.append(clip_features(path, self.conf.features))
                    names.append(rel)
                except (DataError, OSError, ValueError) as err:
                    warn(f"skipping unreadable audio file {path}: {err}")
                    skipped[rel] = (*found[rel], str(err)[:500])  # not retried until its mtime or size changes
                    update.skipped.append(rel)
            chunks.append(self.embed_features(mels))
            done += names
            bar.update(len(todo[start:start + CHUNK_FILES]))  # after the embedding, which dominates
        bar.close()
        emb = np.concatenate(chunks) if chunks else np.empty((0, self.conf.model.audio_enc.out_dim), np.float32)
        return done, emb

    # ---- search ----------------------------------------------------------------------------

    def search(self, query: str, k: int = 10, use_faiss: bool = False) -> list[tuple[str, float]]:
        """The ``k`` best files of the indexed folder for one caption: ``[(absolute path, score)]``, best first."""
        return self.search_many([query], k, use_faiss)[0]

    def search_many(self, queries: Sequence[str], k: int = 10,
                    use_faiss: bool = False) -> list[list[tuple[str, float]]]:
        """:meth:`search` for several captions (embedded in one batch)."""
        self._searchable(k)
        check_queries(list(queries))
        with few_threads(self.device.type == "cpu" and len(queries) <= FEW_QUERIES):
            return self.search_embeddings(self.embed_text(list(queries)), k, use_faiss)

    def search_audio(self, item: AudioItem, k: int = 10, use_faiss: bool = False) -> list[tuple[str, float]]:
        """The ``k`` files of the indexed folder that sound most like ``item`` (audio -> audio).

        Args:
            item: an audio file path, a ``(y, sr)`` tuple or ``(time, n_mels)`` log-mels (as :meth:`embed_audio`).

        Returns:
            ``[(absolute path, score)]``, best first; a clip of the index finds itself first (score 1).
        """
        self._searchable(k)
        if isinstance(item, np.ndarray) and item.ndim == 1:
            raise PipelineError("a bare waveform has no sample rate: pass (y, sr), a file path or log-mels")
        try:
            with few_threads(self.device.type == "cpu"):
                return self.search_embeddings(self.embed_audio([item]), k, use_faiss)[0]
        except ValueError as err:
            raise PipelineError(str(err)) from err

    def _searchable(self, k: int) -> FolderIndex:
        """The index, after checking that there is one with files and that ``k`` >= 1."""
        index = self.index
        if index is None:
            raise PipelineError("no folder indexed yet: call index_folder(DIR) first")
        if k < 1:
            raise PipelineError(f"k must be >= 1, got {k}")
        if not len(index):
            raise PipelineError(f"{index.folder} has no readable audio files ({', '.join(AUDIO_EXTENSIONS)})")
        return index

    def search_embeddings(self, q: np.ndarray, k: int = 10,
                          use_faiss: bool = False) -> list[list[tuple[str, float]]]:
        """The ``k`` best files for each query embedding ``q`` ``(n_queries, E)``: ``[[(path, score)]]``."""
        index = self._searchable(k)
        k = min(k, len(index))
        q = np.asarray(q, dtype=np.float32).reshape(-1, index.embeddings.shape[1])  # (n_queries, E)
        if use_faiss:
            scores, rows = index.faiss_index().search(np.ascontiguousarray(q), k)
        else:
            all_scores = q @ index.embeddings.T  # (n_queries, n_files)
            rows = top_k(all_scores, k)
            scores = np.take_along_axis(all_scores, rows, axis=1)
        return [list(zip(index.abs_paths(r), map(float, s), strict=True)) for r, s in zip(rows, scores, strict=True)]


def check_queries(texts: Sequence[str]) -> None:
    """Raise :class:`PipelineError` for no captions or an empty / whitespace-only caption."""
    if not texts:
        raise PipelineError("no query given: pass a caption such as \"a dog barks while cars pass\"")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise PipelineError(f"query {i + 1} is empty: pass a caption such as \"a dog barks while cars pass\"")
