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

Stage 2's driver, which computes whole splits with these, is :mod:`utils.features.extract`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import librosa
import numpy as np
import scipy.fft
import torch

from utils.base.devices import one_thread

N_MELS = 64  # mel bands
WIN_SEC = 0.040  # analysis window (s)
HOP_SEC = 0.020  # hop (s)
LOG_OFFSET = float(np.spacing(1))  # 2.22e-16, added before the log
FORMULA = (
    "log(librosa.feature.melspectrogram(y=mono_native_sr, sr=sr, n_fft=2**ceil(log2(win)), "
    "hop_length=round(hop_sec*sr), win_length=win=round(win_sec*sr), n_mels=n_mels, power=2, center=True, "
    "pad_mode='constant', window='hann', htk=False, norm='slaney') + np.spacing(1)).T -> [T, n_mels] float32"
)
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
    """Why ``sr`` cannot give ``n_mels`` informative bands (some mel filters would be empty), or None.
    Raises ``ValueError`` (from :func:`frame_spec`) when ``sr`` is too low for the window itself."""
    s = frame_spec(sr, n_mels, win_sec, hop_sec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # librosa's "Empty filters detected": what this counts
        empty = int((mel_filters(sr, s.n_fft, n_mels).max(axis=1) == 0).sum())
    if empty:
        return (f"sample rate {sr} Hz is too low for {n_mels} mel bands with a {win_sec} s window "
                f"({empty} band(s) would be empty)")
    return None


def features_problem(feat: np.ndarray) -> str | None:
    """Why log-mels ``(T, n_mels)`` must not be stored (NaN or infinite values), or None."""
    bad = int((~np.isfinite(feat)).sum())
    if bad:
        return f"log-mels not finite ({bad} of {feat.size} values NaN or infinite; amplitude far beyond [-1, 1]?)"
    return None


MelKey = tuple[int, int, int]  # (sr, n_fft, n_mels)
_MEL_BANKS: dict[MelKey, np.ndarray] = {}  # mel_filters' cache; seeded in workers by use_mel_filters


def mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)``: ``(n_mels, 1 + n_fft//2)`` float32, read-only.

    Slaney mel scale and area normalisation, 0 Hz to sr/2. Cached per (sr, n_fft, n_mels). The first call in a
    process costs 1.0-1.3 s of CPU: it imports ``librosa.filters``, which imports ``scipy.signal`` (~0.8 s) and
    numba (~0.15 s); the computation itself takes ~5 ms. Stage 2 therefore builds its banks once, in the parent,
    and hands them to its workers (:func:`use_mel_filters`).
    """
    key = (int(sr), int(n_fft), int(n_mels))
    weights = _MEL_BANKS.get(key)
    if weights is None:
        weights = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)  # (n_mels, freq) float32
        weights.flags.writeable = False
        _MEL_BANKS[key] = weights
    return weights


def use_mel_filters(banks: dict[MelKey, np.ndarray]) -> None:
    """Adopt banks that :func:`prepare` built in another process, so this one never imports ``librosa.filters``.

    For worker processes: under fork they inherit the parent's cache anyway, but under spawn or forkserver
    each would otherwise pay the import (1.0-1.3 s of CPU) again.
    """
    for (sr, n_fft, n_mels), weights in banks.items():
        if weights.shape != (n_mels, 1 + n_fft // 2) or weights.dtype != np.float32:
            raise ValueError(f"mel bank for {(sr, n_fft, n_mels)} has shape {weights.shape} {weights.dtype}")
        weights.flags.writeable = False  # unpickled arrays come back writeable
        _MEL_BANKS[(int(sr), int(n_fft), int(n_mels))] = weights


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


def prepare(sr: int, n_mels: int = N_MELS, win_sec: float = WIN_SEC,
            hop_sec: float = HOP_SEC) -> dict[MelKey, np.ndarray]:
    """Build (and cache) the window and mel filters of ``sr`` now, e.g. before starting workers.

    Returns ``{(sr, n_fft, n_mels): bank}``, for the workers' :func:`use_mel_filters`.
    ``ValueError`` as :func:`frame_spec`.
    """
    s = frame_spec(sr, n_mels, win_sec, hop_sec)
    _window(s.win, s.n_fft)
    _mel_filters_t(sr, s.n_fft, s.n_mels)
    return {(s.sr, s.n_fft, s.n_mels): mel_filters(s.sr, s.n_fft, s.n_mels)}


def _as_mono_f32(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"expected mono audio of shape (n_samples,), got {y.shape}; see utils.data.audio.load_audio")
    return np.ascontiguousarray(y, dtype=np.float32)


def logmel_librosa(y: np.ndarray, sr: int, n_mels: int = N_MELS, win_sec: float = WIN_SEC,
                   hop_sec: float = HOP_SEC) -> np.ndarray:
    """The reference: ``librosa.feature.melspectrogram`` + log. ``y (n_samples,)`` -> ``(T, n_mels)`` float32."""
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


def _scipy_rfft(block: int, n_fft: int):
    windowed = np.zeros((block, n_fft), dtype=np.float64)

    def rfft(n: int) -> np.ndarray:
        return scipy.fft.rfft(windowed[:n], axis=-1)

    return windowed, rfft


def _torch_rfft(block: int, n_fft: int):
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


def checked_logmel(y: np.ndarray, sr: int, n_mels: int = N_MELS, win_sec: float = WIN_SEC,
                   hop_sec: float = HOP_SEC) -> tuple[np.ndarray | None, str | None]:
    """:func:`logmel` ``(T, n_mels)`` and None, or None and why the clip gives no usable features
    (:func:`rate_problem`, :func:`features_problem`). ``ValueError`` as :func:`frame_spec`."""
    if problem := rate_problem(sr, n_mels, win_sec, hop_sec):
        return None, problem
    with np.errstate(over="ignore", invalid="ignore"):
        feat = logmel(y, sr, n_mels, win_sec, hop_sec)  # (T, n_mels)
    if problem := features_problem(feat):
        return None, problem
    return feat, None
