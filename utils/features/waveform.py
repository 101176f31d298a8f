"""Stage 2's second feature set: mono waveforms resampled to ``features.sample_rate`` (``features.kind:
waveform``), for audio encoders that run their own feature extractor (HFAudioEncoder). Stored like log-mels, one
``(samples, 1)`` float32 dataset per clip, in ``<split>_audio_waveforms_<rate>hz.hdf5`` (utils/base/paths.py), so
both feature sets of a split live side by side.
"""

from __future__ import annotations

import numpy as np
import soxr

WAVEFORM_FORMULA = "mono mean of channels, soxr HQ resampling to sample_rate, float32, (samples, 1)"


def waveform(y: np.ndarray, sr: int, sample_rate: int) -> tuple[np.ndarray | None, str | None]:
    """``(samples, 1)`` float32 at ``sample_rate`` and None, or None and why the clip cannot be stored."""
    y = np.asarray(y, dtype=np.float32)
    if y.ndim == 2:
        y = y.mean(axis=1)  # (samples, channels) -> mono
    if y.size == 0:
        return None, "no samples"
    if not np.isfinite(y).all():
        return None, f"waveform not finite ({int((~np.isfinite(y)).sum())} of {y.size} samples NaN or infinite)"
    if sr != sample_rate:
        y = soxr.resample(y, sr, sample_rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(y.reshape(-1, 1)), None
