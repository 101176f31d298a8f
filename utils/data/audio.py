"""Reading audio files: mono float32 at the file's own sample rate, with errors that name the file.

Used by stage 2 (log-mels of a split) and by anything that embeds arbitrary audio folders.
"""

from __future__ import annotations

import os
import stat
import struct
import warnings
from pathlib import Path

import audioread
import librosa
import numpy as np
import soundfile as sf

from utils.base.errors import DataError, warn

# What soundfile (libsndfile) or librosa (audioread / ffmpeg) can decode: stage 1's and search's audio files.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".m4a", ".opus")

# Containers whose 16-bit PCM soundfile decodes exactly as int / 32768; read as int16 and scaled
# ourselves, which is 4x faster than libsndfile's own float conversion and bit-identical to it.
_FAST_PCM16_FORMATS = {"WAV", "WAVEX", "AIFF", "FLAC"}
_PCM16_SCALE = np.float32(1.0 / 32768.0)
# File suffixes named differently from their libsndfile format.
_SUFFIX_FORMATS = {"aif": "AIFF", "aifc": "AIFF", "wave": "WAV", "oga": "OGG", "opus": "OGG", "snd": "AU"}


class AudioReadError(DataError):
    """An audio file that cannot be used: missing, empty, undecodable, zero-length or non-finite."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read audio {self.path}: {reason}")


def load_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode ``path`` -> ``(y, sr)``: ``y`` is ``(n_samples,)`` float32 mono, ``sr`` the native rate.

    Multi-channel audio is averaged over channels (``librosa.to_mono``); the result equals
    ``librosa.load(path, sr=None, mono=True)``. soundfile reads the file; formats it cannot decode
    fall back to ``librosa.load`` (audioread). Raises :class:`AudioReadError` naming the file.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as err:
        raise AudioReadError(path, f"file not accessible ({err.strerror or err})") from err
    if stat.S_ISDIR(st.st_mode):
        raise AudioReadError(path, "is a directory")
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:  # (pipes and devices report size 0 too)
        raise AudioReadError(path, "empty file (0 bytes)")
    try:
        y, sr = _read_soundfile(path)
    except (sf.LibsndfileError, sf.SoundFileError, RuntimeError) as sf_err:
        if _soundfile_format(path):  # libsndfile knows this format: the file itself is bad
            raise AudioReadError(path, f"undecodable ({_short(sf_err, path)})") from sf_err
        y, sr = _read_fallback(path, sf_err)
    if y.size == 0 or sr <= 0:
        raise AudioReadError(path, "zero-length audio (no samples)")
    if not np.isfinite(y).all():
        raise AudioReadError(path, "audio contains NaN or infinite samples")
    if path.suffix.lower() in (".wav", ".wave") and (note := wav_truncation(path)):
        warn(f"{path} is {note}; using the samples it holds")
    return y, sr


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    with sf.SoundFile(str(path)) as f:
        sr = int(f.samplerate)
        if f.subtype == "PCM_16" and f.format in _FAST_PCM16_FORMATS:
            data = f.read(dtype="int16", always_2d=True)  # (n_samples, channels)
            y = np.multiply(data, _PCM16_SCALE, dtype=np.float32)
        else:
            y = f.read(dtype="float32", always_2d=True)  # (n_samples, channels)
    return _to_mono(y), sr


def _soundfile_format(path: Path) -> bool:
    """Whether libsndfile reads files with this suffix (then decoding elsewhere is pointless)."""
    ext = path.suffix.lower().lstrip(".")
    return bool(ext) and _SUFFIX_FORMATS.get(ext, ext.upper()) in sf.available_formats()


def _short(err: Exception, path: Path) -> str:
    """An error message without the file name (the caller's message names it already)."""
    text = str(err).replace(f"Error opening {str(path)!r}: ", "").strip()
    return text or type(err).__name__


def _to_mono(y: np.ndarray) -> np.ndarray:
    """``(n_samples, channels)`` -> ``(n_samples,)`` float32, the channel mean (as ``librosa.to_mono``)."""
    if y.shape[1] == 1:
        return np.ascontiguousarray(y[:, 0])
    return np.mean(y.T, axis=0, dtype=np.float32)


def _read_fallback(path: Path, sf_err: Exception) -> tuple[np.ndarray, int]:
    """Formats libsndfile cannot read (e.g. m4a): let librosa try its other backends."""
    errors = (RuntimeError, OSError, ValueError, EOFError, audioread.DecodeError)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa's "PySoundFile failed. Trying audioread instead."
            y, sr = librosa.load(str(path), sr=None, mono=True, dtype=np.float32)
    except errors as err:
        raise AudioReadError(path, f"undecodable ({_short(sf_err, path)}; librosa: {type(err).__name__})") from err
    return np.ascontiguousarray(y, dtype=np.float32), int(sr)


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
