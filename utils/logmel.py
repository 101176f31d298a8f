"""Log-mel spectrograms with the DCASE 2023 Task 6B baseline's formula, and stage 2's extraction driver.

The formula (baseline ``audio_logmel.py``), for mono audio ``y`` at its native sample rate ``sr``::

    win   = round(win_sec * sr)                    # 1764 samples at 44.1 kHz (40 ms)
    hop   = round(hop_sec * sr)                    #  882 samples (20 ms)
    n_fft = next power of two >= win               # 2048
    mel   = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop, win_length=win,
                                           n_mels=64)   # power 2, centred frames, zero padding,
                                                        # periodic Hann, Slaney mel filters 0..sr/2
    out   = log(mel + np.spacing(1)).T             # (T, 64) float32, T = 1 + len(y) // hop

Three implementations of it, equal to ~1e-6 (the tests hold them to 1e-4):

- :func:`logmel_librosa`: the reference, librosa itself;
- :func:`logmel_numpy`: blocks of frames, numpy + a float64 ``torch.fft.rfft`` (or scipy's); the CPU
  path of stage 2 (:func:`logmel`), the fastest on CPU;
- :func:`logmel_torch` / :func:`logmel_torch_batch`: ``torch.stft``, batched on a GPU.

Precision: librosa multiplies float32 frames by a float64 window, so its FFT runs in float64. The
others do too. A float32 FFT takes half the time, but its rounding noise (about -140 dB below the
frame's energy) shows in quiet mel bands: differences up to 1e-3 on low-passed 16-bit audio and of
several units on synthetic float tones, instead of 1e-6.

:func:`extract_split` computes one split: a process pool over clips, resumable and atomic (see there).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import shutil
import sys
import time
import zipfile
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import h5py
import numpy as np
import scipy.fft
from tqdm import tqdm

from utils.audio import AudioReadError, load_audio
from utils.errors import DataError, PipelineError

N_MELS = 64  # mel bands
WIN_SEC = 0.040  # analysis window (s)
HOP_SEC = 0.020  # hop (s)
LOG_OFFSET = float(np.spacing(1))  # 2.22e-16, added before the log
FORMULA = (
    "log(librosa.feature.melspectrogram(y=mono_native_sr, sr=sr, n_fft=2**ceil(log2(win)), "
    "hop_length=round(hop_sec*sr), win_length=win=round(win_sec*sr), n_mels=n_mels, power=2, center=True, "
    "pad_mode='constant', window='hann', htk=False, norm='slaney') + np.spacing(1)).T -> [T, n_mels] float32"
)
FORMAT_VERSION = 1  # bump when the stored layout changes; older files and parts are then rebuilt
SKIP_PREFIX = "log-mel: "  # starts the reason of every skip-report row stage 2 writes
_BLOCK_FRAMES = 64  # frames per FFT block in logmel_numpy (~1 MB buffers: cache-resident, bounded memory)


# --------------------------------------------------------------------------------------------
# The formula
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameSpec:
    """Framing of one sample rate; all sizes in samples."""

    sr: int  # sample rate (Hz)
    win: int  # Hann window length
    hop: int  # hop between frames
    n_fft: int  # FFT size: the window is zero-padded (centred) to this
    n_mels: int  # mel bands

    def n_frames(self, n_samples: int) -> int:
        """Frames of a clip of ``n_samples`` (centred frames): ``1 + n_samples // hop``."""
        return 1 + n_samples // self.hop


def frame_spec(sr: int, n_mels: int = N_MELS, win_sec: float = WIN_SEC, hop_sec: float = HOP_SEC) -> FrameSpec:
    """The baseline's framing at ``sr``; e.g. 44100 Hz -> win 1764, hop 882, n_fft 2048."""
    win = int(round(sr * win_sec))
    hop = int(round(sr * hop_sec))
    if sr <= 0 or win < 1 or hop < 1:
        raise ValueError(f"sample rate {sr} Hz is too low for a {win_sec} s window / {hop_sec} s hop")
    # The baseline writes 2 ** int(np.ceil(np.log(win) / np.log(2.0))); exact for every non-power of two.
    n_fft = 1 << (win - 1).bit_length()
    return FrameSpec(sr=int(sr), win=win, hop=hop, n_fft=n_fft, n_mels=n_mels)


def rate_problem(sr: int, n_mels: int = N_MELS, win_sec: float = WIN_SEC, hop_sec: float = HOP_SEC) -> str | None:
    """Why ``sr`` cannot give ``n_mels`` informative bands (some mel filters would be empty), or None."""
    s = frame_spec(sr, n_mels, win_sec, hop_sec)
    empty = int((mel_filters(sr, s.n_fft, n_mels).max(axis=1) == 0).sum())
    if empty:
        return (f"sample rate {sr} Hz is too low for {n_mels} mel bands with a {win_sec} s window "
                f"({empty} band(s) would be empty)")
    return None


def features_problem(feat: np.ndarray) -> str | None:
    """Why log-mels ``(T, n_mels)`` must not be stored (NaN or infinite values), or None."""
    bad = int((~np.isfinite(feat)).sum())
    if bad:
        return (f"log-mels not finite ({bad} of {feat.size} values NaN or infinite; "
                "amplitude far beyond [-1, 1]?)")
    return None


@functools.lru_cache(maxsize=64)
def mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)``: ``(n_mels, 1 + n_fft//2)`` float32.

    Slaney mel scale and area normalisation, 0 Hz to sr/2. librosa's algorithm step for step (the
    tests check equality), without importing librosa.filters, which costs 1-2 s per process (numba).
    """
    freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)  # (freq,) Hz
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(float(sr) / 2), n_mels + 2))  # (n_mels + 2,)
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, freqs)  # (n_mels + 2, freq)
    weights = np.zeros((n_mels, len(freqs)), dtype=np.float32)
    for i in range(n_mels):
        rising = -ramps[i] / widths[i]
        falling = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:n_mels + 2] - edges[:n_mels]))[:, np.newaxis]  # unit area per filter
    weights.flags.writeable = False
    return weights


_MEL_STEP_HZ = 200.0 / 3  # Slaney: linear below 1 kHz, 200/3 Hz per mel
_MEL_LOG_HZ = 1000.0  # start of the log region
_MEL_LOG_STEP = np.log(6.4) / 27.0  # log-region step


def _hz_to_mel(hz: float) -> float:
    if hz >= _MEL_LOG_HZ:
        return _MEL_LOG_HZ / _MEL_STEP_HZ + np.log(hz / _MEL_LOG_HZ) / _MEL_LOG_STEP
    return hz / _MEL_STEP_HZ


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = _MEL_STEP_HZ * mels
    log_region = mels >= _MEL_LOG_HZ / _MEL_STEP_HZ
    hz[log_region] = _MEL_LOG_HZ * np.exp(_MEL_LOG_STEP * (mels[log_region] - _MEL_LOG_HZ / _MEL_STEP_HZ))
    return hz


@functools.lru_cache(maxsize=64)
def _mel_filters_t(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    fbt = np.ascontiguousarray(mel_filters(sr, n_fft, n_mels).T)  # (freq, mels)
    fbt.flags.writeable = False
    return fbt


@functools.lru_cache(maxsize=64)
def _window(win: int, n_fft: int) -> np.ndarray:
    """Periodic Hann of ``win`` samples centred in ``n_fft`` zeros, float64.

    As ``librosa.stft``'s ``pad_center(get_window('hann', win, fftbins=True), size=n_fft)``, computed
    as scipy does (the tests check equality).
    """
    phase = np.linspace(-np.pi, np.pi, win + 1)[:-1]
    w = np.zeros(n_fft)
    left = (n_fft - win) // 2
    w[left:left + win] = 0.5 + 0.5 * np.cos(phase)
    w.flags.writeable = False
    return w


def _as_mono_f32(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"expected mono audio of shape (n_samples,), got {y.shape}; see utils.audio.load_audio")
    return np.ascontiguousarray(y, dtype=np.float32)


def logmel_librosa(y: np.ndarray, sr: int, n_mels: int = N_MELS, win_sec: float = WIN_SEC,
                   hop_sec: float = HOP_SEC) -> np.ndarray:
    """The reference: ``librosa.feature.melspectrogram`` + log. ``y (n_samples,)`` -> ``(T, n_mels)`` float32."""
    import librosa

    s = frame_spec(sr, n_mels, win_sec, hop_sec)
    mel = librosa.feature.melspectrogram(y=_as_mono_f32(y), sr=sr, n_fft=s.n_fft, hop_length=s.hop,
                                         win_length=s.win, n_mels=n_mels)  # (n_mels, T)
    return np.log(mel + np.spacing(1)).T.astype(np.float32)


def logmel_numpy(y: np.ndarray, sr: int, n_mels: int = N_MELS, win_sec: float = WIN_SEC,
                 hop_sec: float = HOP_SEC, fft: str = "torch") -> np.ndarray:
    """The formula over blocks of frames. ``y (n_samples,)`` -> ``(T, n_mels)`` float32.

    Framing, power and mel projection in numpy; the float64 real FFT by ``fft``: ``'torch'``
    (``torch.fft.rfft``, MKL on x86: 2x faster than pocketfft) or ``'scipy'`` (``scipy.fft.rfft``,
    no torch needed). Blocks of 64 frames keep every buffer in cache and memory bounded for long files.
    """
    if fft not in _RFFTS:
        raise ValueError(f"fft must be one of {sorted(_RFFTS)}, got {fft!r}")
    s = frame_spec(sr, n_mels, win_sec, hop_sec)
    window = _window(s.win, s.n_fft)  # (n_fft,) float64
    fbt = _mel_filters_t(sr, s.n_fft, n_mels)  # (freq, mels) float32
    n_freq = s.n_fft // 2 + 1
    padded = np.pad(_as_mono_f32(y), s.n_fft // 2)  # centred frames, zero padding
    frames = np.lib.stride_tricks.sliding_window_view(padded, s.n_fft)[:: s.hop]  # (T, n_fft) view
    n_frames = frames.shape[0]
    out = np.empty((n_frames, n_mels), dtype=np.float32)  # (T, mels)
    block = min(_BLOCK_FRAMES, n_frames)
    power = np.empty((block, n_freq), dtype=np.float32)  # (block, freq)
    lo, hi = (s.n_fft - s.win) // 2, (s.n_fft - s.win) // 2 + s.win  # the window's support
    with one_thread(torch_too=fft == "torch"):
        windowed, rfft = _RFFTS[fft](block, s.n_fft)  # (block, n_fft) float64 zeros; its FFT
        for start in range(0, n_frames, block):
            n = min(block, n_frames - start)
            np.multiply(frames[start:start + n, lo:hi], window[lo:hi], out=windowed[:n, lo:hi])
            spec = rfft(n)  # (n, freq) complex128
            parts = spec.view(np.float64).reshape(n, n_freq, 2)  # (n, freq, re/im)
            np.square(parts, out=parts)
            np.add(parts[..., 0], parts[..., 1], out=power[:n], casting="same_kind")  # |X|^2 as float32
            np.matmul(power[:n], fbt, out=out[start:start + n])
    out += np.float32(LOG_OFFSET)
    return np.log(out, out=out)


@contextlib.contextmanager
def one_thread(torch_too: bool = True) -> Iterator[None]:
    """Run BLAS (and torch) on one thread inside the block, then restore the previous settings.

    Blocks of 64 frames are too small to gain from threads, and on a busy machine the spinning
    thread pools of OpenBLAS and OpenMP (torch/MKL) stall each other: a clip took 50x longer on 2
    loaded cores. Process-wide while it lasts, like every thread setting of these libraries.
    """
    limiter = _blas_controller()
    with limiter.limit(limits=1, user_api="blas") if limiter is not None else contextlib.nullcontext():
        if not torch_too:
            yield
            return
        import torch

        before = torch.get_num_threads()
        if before != 1:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if before != 1:
                torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl comes with librosa's scikit-learn
        return None
    return ThreadpoolController()


def _scipy_rfft(block: int, n_fft: int):
    windowed = np.zeros((block, n_fft), dtype=np.float64)

    def rfft(n: int) -> np.ndarray:
        return scipy.fft.rfft(windowed[:n], axis=-1)

    return windowed, rfft


def _torch_rfft(block: int, n_fft: int):
    import torch

    # torch's allocator aligns buffers to 64 bytes, so MKL takes the same code path for every clip
    # and the output is bit-for-bit reproducible.
    frames = torch.zeros((block, n_fft), dtype=torch.float64)
    result = torch.empty((block, n_fft // 2 + 1), dtype=torch.complex128)
    view = result.numpy()

    def rfft(n: int) -> np.ndarray:
        torch.fft.rfft(frames[:n], dim=-1, out=result[:n])
        return view[:n]

    return frames.numpy(), rfft


_RFFTS = {"torch": _torch_rfft, "scipy": _scipy_rfft}


def logmel(y: np.ndarray, sr: int, n_mels: int = N_MELS, win_sec: float = WIN_SEC,
           hop_sec: float = HOP_SEC) -> np.ndarray:
    """The CPU implementation stage 2 uses: the fastest measured (benchmarks/bench_logmel.py --profile)."""
    return logmel_numpy(y, sr, n_mels, win_sec, hop_sec, fft="torch")


# --------------------------------------------------------------------------------------------
# torch (CPU or GPU, batched)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _torch_consts(sr: int, win: int, n_fft: int, n_mels: int, device: str):
    import torch

    window = torch.hann_window(win, periodic=True, dtype=torch.float64, device=device)  # (win,)
    # On GPUs a float32 matmul may run in TF32 (10-bit mantissa): project in float64 there.
    dtype = torch.float32 if torch.device(device).type == "cpu" else torch.float64
    fb = torch.from_numpy(np.array(mel_filters(sr, n_fft, n_mels))).to(device=device, dtype=dtype)
    return window, fb  # fb: (mels, freq)


def logmel_torch(y: np.ndarray, sr: int, device: str = "cpu", n_mels: int = N_MELS, win_sec: float = WIN_SEC,
                 hop_sec: float = HOP_SEC) -> np.ndarray:
    """The formula with ``torch.stft`` on ``device``. ``y (n_samples,)`` -> ``(T, n_mels)`` float32 (numpy)."""
    return logmel_torch_batch([y], sr, device, n_mels, win_sec, hop_sec)[0]


def logmel_torch_batch(ys: Sequence[np.ndarray], sr: int, device: str = "cpu", n_mels: int = N_MELS,
                       win_sec: float = WIN_SEC, hop_sec: float = HOP_SEC) -> list[np.ndarray]:
    """Several clips of one sample rate in one ``torch.stft`` call: list of ``(T_i, n_mels)`` float32.

    Clips are zero-padded to the longest; as the formula pads with zeros too, the first
    ``1 + len(y_i) // hop`` frames of each row are exactly the clip's own frames.
    """
    import torch

    if not ys:
        return []
    s = frame_spec(sr, n_mels, win_sec, hop_sec)
    window, fb = _torch_consts(s.sr, s.win, s.n_fft, n_mels, str(device))
    ys = [_as_mono_f32(y) for y in ys]
    lengths = [len(y) for y in ys]
    host = np.zeros((len(ys), max(lengths)), dtype=np.float32)  # (batch, samples)
    for row, y in zip(host, ys, strict=True):
        row[: len(y)] = y
    with torch.inference_mode():
        batch = torch.from_numpy(host).to(device).double()
        spec = torch.stft(batch, s.n_fft, hop_length=s.hop, win_length=s.win, window=window, center=True,
                          pad_mode="constant", return_complex=True)  # (batch, freq, T) complex128
        power = (spec.real.square() + spec.imag.square()).to(fb.dtype)  # (batch, freq, T)
        del spec
        mel = torch.matmul(fb, power)  # (batch, mels, T)
        feats = torch.log(mel + LOG_OFFSET).float().transpose(1, 2).cpu().numpy()  # (batch, T, mels)
    return [np.ascontiguousarray(f[: s.n_frames(n)]) for f, n in zip(feats, lengths, strict=True)]


# --------------------------------------------------------------------------------------------
# Stage 2 driver
# --------------------------------------------------------------------------------------------


@dataclass
class Clip:
    """One row of a stage-1 audio table."""

    fid: str  # clip ID: the HDF5 dataset name
    fname: str  # file name (skip reports are keyed by it)
    rel: str  # path as written in the table (relative to dataset_dir)
    path: Path  # resolved path
    sample_rate: int = 0  # as probed by stage 1 (0 = unknown); only used to precompute filters


@dataclass
class ExtractSummary:
    """What :func:`extract_split` did."""

    out_path: Path
    n_clips: int  # clips in the table
    n_computed: int  # clips computed in this run
    n_reused: int  # clips taken from the existing HDF5 or from an interrupted run's parts
    skipped: list[dict] = field(default_factory=list)  # rows (fname, path, reason) that failed this run
    seconds: float = 0.0  # wall time of the call
    min_frames: int = 0  # shortest stored clip (frames)
    max_frames: int = 0  # longest stored clip (frames)
    up_to_date: bool = False  # the HDF5 already held every clip; nothing was done

    @property
    def n_stored(self) -> int:
        return self.n_computed + self.n_reused

    def describe(self) -> str:
        rate = self.n_computed / self.seconds if self.seconds > 0 else 0.0
        state = "up to date" if self.up_to_date else f"computed {self.n_computed} ({rate:.1f} clips/s)"
        return (f"{self.n_stored}/{self.n_clips} clips in {self.out_path.name}: {state}, reused {self.n_reused}, "
                f"skipped {len(self.skipped)}; {self.seconds:.1f} s; frames {self.min_frames}-{self.max_frames}")


def parts_dir_for(out_path: str | os.PathLike) -> Path:
    """The sidecar folder holding finished clips of an unfinished run: ``<out_path>.parts/``."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".parts")


def extract_split(audio_rows: Iterable[dict], dataset_dir: str | os.PathLike, out_path: str | os.PathLike,
                  skipped_path: str | os.PathLike, workers: int = 0, device: str = "cpu", progress: bool = True,
                  *, n_mels: int = N_MELS, win_sec: float = WIN_SEC, hop_sec: float = HOP_SEC,
                  batched: bool | None = None, desc: str = "log-mel") -> ExtractSummary:
    """Write one ``(T, n_mels)`` float32 dataset per clip (named by fid) to the HDF5 ``out_path``.

    ``audio_rows``: a stage-1 audio table (fid, fname, path relative to ``dataset_dir``, ...).
    ``workers``: processes (0 = all cores). ``device='cuda'`` decodes in ``workers`` processes and
    computes batches on the GPU; ``batched=True`` takes that path on any device (tests use the CPU).

    Resumable and atomic: each finished clip is saved at once, atomically, to
    ``<out_path>.parts/<fid>.npz`` (CRC-checked on reuse; a torn or corrupt part is recomputed).
    The HDF5 is assembled in a temporary file and renamed onto ``out_path``, so ``out_path`` is
    always absent, the previous complete file, or the new complete file. A rerun skips clips
    already in ``out_path`` or in the parts folder, and returns at once when ``out_path`` holds
    every clip. Unreadable clips are left out and reported in ``skipped_path`` (merged with the
    rows stage 1 wrote there); they are retried on the next run.
    """
    t0 = time.perf_counter()
    device = _check_device(device)
    out_path = Path(out_path)
    params = _params(n_mels, win_sec, hop_sec)
    clips = _clips(audio_rows, Path(dataset_dir))
    wanted = {c.fid for c in clips}
    parts_dir = parts_dir_for(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out_path.parent, out_path.name)

    existing = _existing_frames(out_path, params)  # fid -> T of a valid existing HDF5, else None
    damaged = existing is not None and 0 in existing.values()  # non-finite clips: never "up to date"
    existing = None if existing is None else {fid: t for fid, t in existing.items() if t}
    if existing is not None and existing.keys() == wanted:
        if parts_dir.exists():
            shutil.rmtree(parts_dir)
        print(f"{out_path}: up to date ({len(wanted)} clips)")
        frames = list(existing.values())
        return ExtractSummary(out_path, len(clips), 0, len(clips), seconds=time.perf_counter() - t0,
                              min_frames=min(frames, default=0), max_frames=max(frames, default=0),
                              up_to_date=True)

    _open_parts_dir(parts_dir, params)
    rebuild = existing is None or damaged  # no usable HDF5 in place: write one even if no clip succeeds
    existing = existing or {}
    done = {fid: t for fid, t in existing.items() if fid in wanted}  # fid -> T, already finished
    from_parts = _finished_parts(parts_dir, [c for c in clips if c.fid not in done], n_mels)
    done.update(from_parts)
    todo = [c for c in clips if c.fid not in done]

    computed: dict[str, int] = {}
    failed: list[dict] = []
    if todo:
        results = _run(todo, parts_dir, params, workers, device, batched, progress, desc)
        for clip, n_frames, reason in results:
            if reason is None:
                computed[clip.fid] = n_frames
            else:
                failed.append({"fname": clip.fname, "path": clip.rel, "reason": f"{SKIP_PREFIX}{reason}"})
    done.update(computed)

    if not done and clips:
        _merge_skipped(Path(skipped_path), clips, failed)
        kept = f"{out_path} left as it was" if out_path.exists() else "nothing written"
        raise DataError(f"not one of the {len(clips)} clips could be turned into log-mels ({kept}); the reasons "
                        f"are in {skipped_path}, e.g. {failed[0]['fname']}: {failed[0]['reason']}")
    if rebuild or done.keys() != existing.keys():
        order = [c.fid for c in clips if c.fid in done]
        _assemble(out_path, order, existing, parts_dir, params)
    shutil.rmtree(parts_dir, ignore_errors=True)
    _merge_skipped(Path(skipped_path), clips, failed)
    frames = list(done.values())
    return ExtractSummary(out_path, len(clips), len(computed), len(done) - len(computed), skipped=failed,
                          seconds=time.perf_counter() - t0, min_frames=min(frames, default=0),
                          max_frames=max(frames, default=0))


def _params(n_mels: int, win_sec: float, hop_sec: float) -> dict:
    """Everything the stored features depend on; a stored file or parts folder with others is rebuilt."""
    return {"n_mels": int(n_mels), "win_sec": float(win_sec), "hop_sec": float(hop_sec), "formula": FORMULA,
            "format_version": FORMAT_VERSION}


def _clips(audio_rows: Iterable[dict], dataset_dir: Path) -> list[Clip]:
    clips, seen = [], set()
    for row in audio_rows:
        fid = str(row["fid"])
        if not fid or "/" in fid or fid == ".":
            raise DataError(f"invalid fid {fid!r} in the audio table (fids are HDF5 dataset names: no '/')")
        if fid in seen:
            raise DataError(f"duplicate fid {fid!r} in the audio table; rerun preprocessing/01_clotho_dataset.py")
        seen.add(fid)
        sr = str(row.get("sample_rate", "")).strip()
        clips.append(Clip(fid, str(row["fname"]), str(row["path"]), dataset_dir / str(row["path"]),
                          int(sr) if sr.isdigit() else 0))
    return clips


# ---- existing HDF5 --------------------------------------------------------------------------


def _existing_frames(out_path: Path, params: dict) -> dict[str, int] | None:
    """``fid -> T`` of the HDF5 at ``out_path``; None when it is absent, unreadable or made otherwise."""
    if not out_path.exists():
        return None
    try:
        with h5py.File(out_path, "r") as h5:
            stored = {k: _attr(h5.attrs.get(k)) for k in params}
            if stored != params:
                print(f"{out_path} was made with other settings or an older version; rebuilding it")
                return None
            return {fid: int(ds.shape[0]) * (features_problem(ds[()]) is None) for fid, ds in h5.items()
                    if isinstance(ds, h5py.Dataset) and ds.ndim == 2 and ds.shape[1] == params["n_mels"]
                    and ds.dtype == np.float32}  # T of a non-finite clip is 0: computed again
    except (OSError, RuntimeError, KeyError, ValueError) as err:  # truncated, or damaged metadata
        print(f"warning: {out_path} is unreadable ({err}); rebuilding it", file=sys.stderr)
        return None


def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---- parts ----------------------------------------------------------------------------------


def _part_path(parts_dir: Path, fid: str) -> Path:
    name = quote(fid, safe="")
    if len(name) > 200:
        import hashlib

        name = hashlib.sha1(fid.encode()).hexdigest()
    return parts_dir / f"{name}.npz"


def _open_parts_dir(parts_dir: Path, params: dict) -> None:
    """Create the parts folder, or empty it when it was written with other settings."""
    marker = parts_dir / "params.json"
    if parts_dir.exists():
        try:
            same = json.loads(marker.read_text(encoding="utf-8")) == params
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(parts_dir)
    if not marker.exists():
        tmp = marker.with_name(f".{marker.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(params), encoding="utf-8")
        os.replace(tmp, marker)


def _save_part(path: Path, feat: np.ndarray, sr: int) -> None:
    """Write atomically: a killed writer leaves only a temporary file, never a torn part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as stream:
        np.savez(stream, feat=feat, sr=np.int64(sr))
    os.replace(tmp, path)


def _load_part(path: Path, n_mels: int) -> tuple[np.ndarray, int] | None:
    """``(feat (T, n_mels) float32, sr)``, or None when the part is missing, torn or corrupt (CRC)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            feat, sr = z["feat"], int(z["sr"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if feat.dtype != np.float32 or feat.ndim != 2 or feat.shape[1] != n_mels or feat.shape[0] < 1:
        return None
    return feat, sr


def _finished_parts(parts_dir: Path, clips: list[Clip], n_mels: int) -> dict[str, int]:
    """``fid -> T`` of the clips whose part is complete; bad parts are deleted (and recomputed)."""
    found = {}
    for clip in clips:
        path = _part_path(parts_dir, clip.fid)
        if not path.exists():
            continue
        part = _load_part(path, n_mels)
        if part is None:
            print(f"warning: discarding a damaged part {path}; it will be recomputed", file=sys.stderr)
            path.unlink()
        else:
            found[clip.fid] = part[0].shape[0]
    return found


def _remove_stale_temps(folder: Path, target: str | None = None) -> None:
    """Delete ``.<name>.tmp-<pid>`` files left by killed processes (of ``target`` only, if given)."""
    name = re.escape(target) if target else ".+"
    pattern = re.compile(rf"^\.{name}\.tmp-(\d+)$")
    for path in folder.iterdir():
        match = pattern.match(path.name)
        if match and not _pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)


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


# ---- computing ------------------------------------------------------------------------------


def _run(todo: list[Clip], parts_dir: Path, params: dict, workers: int, device: str, batched: bool | None,
         progress: bool, desc: str) -> list[tuple[Clip, int, str | None]]:
    """Compute ``todo``, saving a part per clip: ``[(clip, T, None) | (clip, 0, reason)]``."""
    if batched is None:
        batched = device != "cpu"
    workers = _n_workers(workers, len(todo))
    if workers > 1:
        _warm_up({c.sample_rate for c in todo}, params)
    by_fid = {c.fid: c for c in todo}
    tasks = [(c.fid, str(c.path), str(_part_path(parts_dir, c.fid)), params["n_mels"], params["win_sec"],
              params["hop_sec"]) for c in todo]
    bar = tqdm(total=len(todo), desc=desc, unit="clip", disable=not progress, smoothing=0.1)
    out = []
    try:
        stream = (_run_batched(tasks, workers, device) if batched else _run_per_clip(tasks, workers))
        for fid, n_frames, reason in stream:
            out.append((by_fid[fid], n_frames, reason))
            bar.update()
    finally:
        bar.close()
    index = {c.fid: i for i, c in enumerate(todo)}
    return sorted(out, key=lambda item: index[item[0].fid])  # table order, whatever the completion order


def _warm_up(sample_rates: set[int], params: dict) -> None:
    """Import torch and build windows and mel filters once, here: forked workers inherit them."""
    import torch  # noqa: F401  (logmel's FFT)

    for sr in sorted(sample_rates):
        try:
            s = frame_spec(sr, params["n_mels"], params["win_sec"], params["hop_sec"])
        except ValueError:
            continue  # reported per clip by the worker
        _window(s.win, s.n_fft)
        _mel_filters_t(sr, s.n_fft, s.n_mels)


def _check_device(device: str) -> str:
    from utils.config import ConfigError

    device = str(device)
    if device == "cpu":
        return device
    if not device.startswith("cuda"):
        raise ConfigError(f"device (--device / features.device) must be 'cpu' or 'cuda[:N]', got {device!r}")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} (--device / features.device) asked for, but CUDA is not available; "
                          "use --device cpu")
    return device


def _n_workers(workers: int, n_tasks: int) -> int:
    if workers <= 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(workers, n_tasks))


def _chunksize(n_tasks: int, workers: int) -> int:
    """Small chunks: a 30 s clip takes ~30 ms against ~0.1 ms of IPC; the workers finish together."""
    return max(1, min(4, n_tasks // (workers * 64)))


def _init_worker() -> None:
    """One thread per worker process: the pool, not BLAS or torch, provides the parallelism."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"  # for libraries this worker has not loaded yet (torch, under spawn)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl comes with librosa's scikit-learn
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _pool(workers: int):
    import multiprocessing

    return multiprocessing.get_context().Pool(workers, initializer=_init_worker)


def _run_per_clip(tasks: list[tuple], workers: int) -> Iterator[tuple[str, int, str | None]]:
    if workers == 1:
        yield from map(_extract_one, tasks)
        return
    with _pool(workers) as pool:
        yield from pool.imap_unordered(_extract_one, tasks, chunksize=_chunksize(len(tasks), workers))


def _extract_one(task: tuple) -> tuple[str, int, str | None]:
    """Worker: decode one clip, compute, save its part. ``(fid, T, None)`` or ``(fid, 0, reason)``."""
    fid, path, part, n_mels, win_sec, hop_sec = task
    try:
        y, sr = load_audio(path)
        problem = rate_problem(sr, n_mels, win_sec, hop_sec)
    except AudioReadError as err:
        return fid, 0, err.reason
    except ValueError as err:  # a sample rate too low for the window
        return fid, 0, str(err)
    if problem:
        return fid, 0, problem
    with np.errstate(over="ignore", invalid="ignore"):
        feat = logmel(y, sr, n_mels, win_sec, hop_sec)  # (T, mels)
    if problem := features_problem(feat):
        return fid, 0, problem
    _save_part(Path(part), feat, sr)
    return fid, feat.shape[0], None


def _load_one(task: tuple) -> tuple[tuple, np.ndarray | None, int, str | None]:
    """Worker of the batched path: decode only."""
    try:
        y, sr = load_audio(task[1])
        problem = rate_problem(sr, *task[3:])
    except AudioReadError as err:
        return task, None, 0, err.reason
    except ValueError as err:  # a sample rate too low for the window
        return task, None, 0, str(err)
    return task, (None if problem else y), sr, problem


_BATCH_SAMPLES = 1 << 25  # samples per GPU batch (~25 clips of 30 s at 44.1 kHz; a 0.6 GB complex128 STFT)
_BATCH_CLIPS = 64  # clips per GPU batch


def _run_batched(tasks: list[tuple], workers: int, device: str) -> Iterator[tuple[str, int, str | None]]:
    """Decode in ``workers`` processes; compute same-sample-rate batches with torch on ``device``."""
    pending: dict[int, list[tuple[tuple, np.ndarray]]] = {}  # sr -> [(task, y)]

    def flush(sr: int) -> Iterator[tuple[str, int, str | None]]:
        group = pending.pop(sr)
        _, n_mels, win_sec, hop_sec = group[0][0][2:]
        feats = logmel_torch_batch([y for _, y in group], sr, device, n_mels, win_sec, hop_sec)
        for (task, _), feat in zip(group, feats, strict=True):
            if problem := features_problem(feat):
                yield task[0], 0, problem
                continue
            _save_part(Path(task[2]), feat, sr)
            yield task[0], feat.shape[0], None

    # The pool is made before any CUDA call, so forked workers never inherit a CUDA context.
    pool = _pool(workers) if workers > 1 else None
    try:
        loaded = _bounded_imap(pool, _load_one, tasks, 4 * workers) if pool else map(_load_one, tasks)
        for task, y, sr, reason in loaded:
            if reason is not None:
                yield task[0], 0, reason
                continue
            group = pending.setdefault(sr, [])
            group.append((task, y))
            if len(group) >= _BATCH_CLIPS or sum(len(v) for _, v in group) >= _BATCH_SAMPLES:
                yield from flush(sr)
        for sr in list(pending):
            yield from flush(sr)
    finally:
        if pool is not None:
            pool.terminate()


def _bounded_imap(pool, fn, tasks: list, window: int) -> Iterator:
    """``pool.imap`` with at most ``window`` tasks in flight, so decoded audio cannot pile up in memory."""
    queue: deque = deque()
    todo = iter(tasks)
    for task in itertools.islice(todo, window):
        queue.append(pool.apply_async(fn, (task,)))
    while queue:
        result = queue.popleft().get()
        for task in itertools.islice(todo, 1):
            queue.append(pool.apply_async(fn, (task,)))
        yield result


# ---- assembling and reporting ---------------------------------------------------------------


def _assemble(out_path: Path, order: list[str], existing: dict[str, int], parts_dir: Path, params: dict) -> None:
    """Write every clip of ``order`` (from the old HDF5 or from parts) to a temporary file, then rename it."""
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as dst:
            dst.attrs.update(params)
            old = h5py.File(out_path, "r") if any(fid in existing for fid in order) else None
            try:
                for fid in order:
                    if old is not None and fid in existing:
                        src = old[fid]
                        dst.create_dataset(fid, data=src[()]).attrs.update(dict(src.attrs))
                        continue
                    part = _load_part(_part_path(parts_dir, fid), params["n_mels"])
                    if part is None:
                        raise PipelineError(f"part of clip {fid} in {parts_dir} vanished or was damaged during "
                                            "the run; rerun the same command to recompute it")
                    dst.create_dataset(fid, data=part[0]).attrs["sr"] = part[1]
            finally:
                if old is not None:
                    old.close()
        _fsync(tmp)
        os.replace(tmp, out_path)
        _fsync(out_path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _merge_skipped(skipped_path: Path, clips: list[Clip], failed: list[dict]) -> None:
    """Rewrite stage 2's rows of the skip report (one per fname); keep every row stage 1 wrote."""
    from utils.tables import SKIPPED_COLUMNS, read_rows, write_rows

    rows = read_rows(skipped_path, SKIPPED_COLUMNS) if skipped_path.is_file() else []
    ours = {c.fname for c in clips}
    kept = [r for r in rows if not (r["reason"].startswith(SKIP_PREFIX) and r["fname"] in ours)]
    merged = kept + failed
    if merged != rows:
        write_rows(skipped_path, merged, SKIPPED_COLUMNS)
