"""Demo audio synthesis with numpy: every helper returns a float64 array of shape (samples,)."""

from __future__ import annotations

import numpy as np

from utils.demo.specs import SOURCES, ClipSpec, Layer

PITCH_HZ = {"low": 180.0, "medium": 700.0, "high": 2800.0}  # centre frequency of a tonal source
CLICK_HZ = {"low": 220.0, "high": 3500.0}  # resonance of a click
SWEEP_RATIO = 1.6  # rising/falling sweeps go from centre / ratio to centre * ratio
CHIRP_RATIO = 1.8  # each chirp sweeps from centre / ratio to centre * ratio (or back)
PULSE_HZ = {"slow": 1.2, "fast": 5.0}  # on/off pulses per second
STRIKE_HZ = {"slow": 1.0, "fast": 3.5}  # bell strikes per second
CHIRP_HZ = {"slow": 1.5, "fast": 6.0}  # chirps per second
BELL_PARTIALS = ((1.0, 1.0, 1.0), (2.0, 0.6, 0.7), (3.0, 0.4, 0.5), (4.2, 0.25, 0.35), (5.4, 0.2, 0.25))  # ratio, amp, decay
CLICK_RATE_HZ = {"slow": 2.0, "fast": 9.0}  # clicks per second
PEAK = {"quiet": 0.05, "loud": 0.7, "fade_in": 0.6, "fade_out": 0.6}  # peak amplitude of the main layer
FADE_DB = 45.0  # a fade spans this many dB over the clip
BACKGROUND_REL = 0.3  # background peak relative to the main layer's peak
FLOOR_RMS = 0.001  # white-noise floor (-60 dBFS) so no clip is digitally silent


def _time(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def _freq_track(centre: float, movement: str, n: int) -> np.ndarray:
    """Instantaneous frequency (Hz) per sample: constant or an exponential sweep through ``centre``."""
    if movement == "steady":
        return np.full(n, centre)
    u = np.linspace(-1.0, 1.0, n)
    return centre * SWEEP_RATIO ** (u if movement == "rising" else -u)


def _gate(rate: float, n: int, sr: int, rng: np.random.Generator, ramp: float = 0.008) -> np.ndarray:
    """On/off pulses (50 % duty) with linear ramps of ``ramp`` seconds."""
    phase = (_time(n, sr) * rate + rng.random()) % 1.0
    dist = np.minimum(phase, 0.5 - phase) / (ramp * rate)
    return np.clip(np.where(phase < 0.5, dist, 0.0), 0.0, 1.0)


def _tone(freq: np.ndarray, sr: int, harmonics: int) -> np.ndarray:
    """Sine (harmonics=1) or band-limited sawtooth following ``freq`` (samples,)."""
    phase = 2 * np.pi * np.cumsum(freq) / sr
    prev, cur = np.zeros_like(phase), np.sin(phase)  # sin((k-1) phase), sin(k phase)
    twice_cos = 2 * np.cos(phase) if harmonics > 1 else None
    out = cur.copy()
    for k in range(2, harmonics + 1):
        if k * freq.max() >= 0.45 * sr:
            break
        prev, cur = cur, twice_cos * cur - prev  # sin(k x) = 2 cos(x) sin((k-1) x) - sin((k-2) x)
        out += cur / k
    return out


def _events(rate: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Start samples of events repeating at ``rate`` per second, with a little timing jitter."""
    times = np.arange(rng.random() / rate, n / sr, 1.0 / rate)
    times = times + rng.normal(0, 0.03 / rate, len(times))
    return np.clip((times * sr).astype(int), 0, n - 1)


def _add_event(out: np.ndarray, start: int, wave: np.ndarray) -> None:
    end = min(len(out), start + len(wave))
    out[start:end] += wave[: end - start]


def _bell(layer: Layer, centre: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    freq = _freq_track(centre, layer.movement, n)
    decay = 0.5 if layer.rhythm == "slow" else 0.22  # seconds, of the fundamental
    partials = []  # (ratio, t, amplitude envelope); each partial lasts 5 of its own time constants
    for ratio, amp, tau in BELL_PARTIALS:
        t = _time(int(5 * tau * decay * sr), sr)
        partials.append((ratio, t, amp * np.exp(-t / (tau * decay))))
    for start in _events(STRIKE_HZ[layer.rhythm], n, sr, rng):
        gain = rng.uniform(0.8, 1.0)
        for ratio, t, env in partials:
            if ratio * freq[start] < 0.45 * sr:
                _add_event(out, start, gain * env * np.sin((2 * np.pi * ratio * freq[start]) * t))
    return out


def _chirps(layer: Layer, centre: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    length = int((0.18 if layer.rhythm == "slow" else 0.09) * sr)
    u = np.linspace(-1.0, 1.0, length)
    freq = centre * CHIRP_RATIO ** (u if layer.movement == "rising" else -u)  # (length,) Hz
    wave = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.hanning(length)
    for start in _events(CHIRP_HZ[layer.rhythm], n, sr, rng):
        _add_event(out, start, wave * rng.uniform(0.7, 1.0))
    return out


def _clicks(layer: Layer, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    freq, tau = (CLICK_HZ["high"], 0.004) if layer.pitch == "high" else (CLICK_HZ["low"], 0.03)
    t = _time(int(6 * tau * sr), sr)
    wave = np.exp(-t / tau) * np.sin(2 * np.pi * freq * t)
    for start in _events(CLICK_RATE_HZ[layer.rhythm], n, sr, rng):
        _add_event(out, start, wave * rng.uniform(0.7, 1.0))
    return out


def _rumble(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Brown (1/f amplitude) noise band-limited to about 20-150 Hz, shaped in the frequency domain."""
    freqs = np.fft.rfftfreq(n, 1 / sr)
    gain = 1 / np.maximum(freqs, 20.0) / (1 + (freqs / 150.0) ** 4)
    gain *= np.minimum(freqs / 20.0, 1.0) ** 2  # no DC, gentle roll-off below 20 Hz
    return np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * gain, n)


def synthesize_layer(layer: Layer, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One layer, peak-normalized to 1: ``(n,)`` float64."""
    centre = PITCH_HZ.get(layer.pitch or "", 0.0) * rng.uniform(0.88, 1.12)
    if layer.source in ("whistle", "buzz"):
        x = _tone(_freq_track(centre, layer.movement, n), sr, 1 if layer.source == "whistle" else 12)
    elif layer.source == "bell":
        x = _bell(layer, centre, n, sr, rng)
    elif layer.source == "chirps":
        x = _chirps(layer, centre, n, sr, rng)
    elif layer.source == "clicks":
        x = _clicks(layer, n, sr, rng)
    elif layer.source == "hiss":
        x = rng.standard_normal(n)
    elif layer.source == "rumble":
        x = _rumble(n, sr, rng)
    else:
        raise ValueError(f"unknown source {layer.source!r}; valid: {sorted(SOURCES)}")
    if layer.source in ("whistle", "buzz", "hiss", "rumble") and layer.rhythm != "continuous":
        slow_rumble = layer.source == "rumble"
        rate = 0.7 if slow_rumble else PULSE_HZ[layer.rhythm]
        x = x * _gate(rate * rng.uniform(0.9, 1.1), n, sr, rng, ramp=0.25 if slow_rumble else 0.008)
    return x / max(np.abs(x).max(), 1e-12)


def _dynamics_envelope(dynamics: str, n: int) -> np.ndarray:
    """Gain per sample: constant, or a fade of FADE_DB decibels in or out."""
    if dynamics in ("quiet", "loud"):
        return np.full(n, PEAK[dynamics])
    db = np.linspace(-FADE_DB, 0.0, n)
    env = PEAK[dynamics] * 10 ** (db / 20)
    return env if dynamics == "fade_in" else env[::-1]


def synthesize_clip(spec: ClipSpec, duration: float, sr: int, rng: np.random.Generator,
                    channels: int = 1) -> np.ndarray:
    """The clip's audio in [-1, 1]: ``(samples,)`` if mono, else ``(samples, channels)``."""
    n = int(round(duration * sr))
    x = synthesize_layer(spec.main, n, sr, rng) * _dynamics_envelope(spec.dynamics, n)
    if spec.background is not None:
        x += synthesize_layer(spec.background, n, sr, rng) * BACKGROUND_REL * PEAK[spec.dynamics]
    x = np.stack([x * g for g in (1.0, 0.8)[:channels]], axis=1)  # (samples, channels)
    x += FLOOR_RMS * rng.standard_normal(x.shape)
    x /= max(1.0, np.abs(x).max() / 0.98)
    return x[:, 0] if channels == 1 else x
