"""Stage 2: the log-mel formula, audio loading, and the resumable extraction driver."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import librosa
import numpy as np
import pytest
import soundfile as sf

from utils.base.devices import one_thread
from utils.base.errors import DataError
from utils.base.tables import AUDIO_COLUMNS, SKIPPED_COLUMNS, read_rows, write_rows
from utils.data.audio import AudioReadError, load_audio
from utils.features import workers as logmel_workers
from utils.features.extract import SKIP_PREFIX, extract_split
from utils.features.logmel import (
    FORMULA,
    frame_spec,
    logmel,
    logmel_librosa,
    logmel_numpy,
    logmel_torch,
    logmel_torch_batch,
    mel_filters,
    use_mel_filters,
)
from utils.features.parts import parts_dir_for

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "preprocessing" / "02_audio_logmel.py"
RATES = (16000, 22050, 44100)


# --------------------------------------------------------------------------------------------
# Test data
# --------------------------------------------------------------------------------------------


def _signal(kind: str, sr: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Float32 mono test signals; the '16' kinds are quantised to 16-bit PCM like real files."""
    rng = np.random.default_rng(seed)
    n = int(sr * seconds)
    t = np.arange(n) / sr
    if kind == "noise16":
        x = 0.2 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t)
    elif kind == "tone16":  # a loud pure tone: the widest dynamic range across mel bands
        x = 0.9 * np.sin(2 * np.pi * 440 * t)
    elif kind == "lowpass16":  # energy only below ~1 kHz, quantisation noise above
        x = np.convolve(rng.standard_normal(n), np.hanning(64) / 8, mode="same")
    elif kind == "lsb16":  # near silence: a few least significant bits of 16-bit audio
        x = rng.integers(-2, 3, n) / 32768
    elif kind == "tiny":  # near silence in float: 1e-6 full scale
        return (1e-6 * rng.standard_normal(n)).astype(np.float32)
    elif kind == "zeros":
        return np.zeros(n, dtype=np.float32)
    else:
        raise ValueError(kind)
    return (np.round(np.clip(x, -1, 1) * 32767) / 32768).astype(np.float32)


def _write_clip(path: Path, sr: int, seconds: float, channels: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.stack([_signal("noise16", sr, seconds, seed + 1000 * c) for c in range(channels)], axis=1)
    x *= rng.uniform(0.3, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr, subtype="PCM_16")


def _make_split(root: Path, n: int, split: str = "development", seed: int = 0) -> list[dict]:
    """``n`` wavs (0.5-3 s, 16/22.05/44.1 kHz, mono and stereo), the audio table and a config."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        sr = RATES[i % 3]
        fname = f"clip {i:03d}, take ({i % 2}).wav"
        _write_clip(root / split / fname, sr, float(rng.uniform(0.5, 3.0)), 1 + i % 2, seed + i)
        rows.append(_row(root, split, i, fname, sr))
    write_rows(root / f"{split}_audio.csv", rows, AUDIO_COLUMNS)
    (root / "conf.yaml").write_text(f"data: {{dataset_dir: '{root}', splits: [{split}]}}\n", encoding="utf-8")
    return rows


def _row(root: Path, split: str, i: int, fname: str, sr: int) -> dict:
    return {"fid": f"{split[:3]}_{i:04d}", "fname": fname, "path": f"{split}/{fname}", "duration": "1.0",
            "sample_rate": sr}


def _read_h5(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as h5:
        return {k: h5[k][()] for k in h5}


# --------------------------------------------------------------------------------------------
# A hand-written float64 reference of the baseline formula (no librosa)
# --------------------------------------------------------------------------------------------


def _hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    return np.where(f < 1000, f / (200 / 3), 15 + np.log(np.maximum(f, 1e-10) / 1000) / (np.log(6.4) / 27))


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    return np.where(m < 15, m * (200 / 3), 1000 * np.exp((m - 15) * np.log(6.4) / 27))


def _slaney_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangles on the Slaney mel scale from 0 to sr/2, each scaled to unit area: (n_mels, freq)."""
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
    fb = np.zeros((n_mels, freqs.size))
    for m in range(n_mels):
        lo, centre, hi = edges[m:m + 3]
        rising = (freqs - lo) / (centre - lo)
        falling = (hi - freqs) / (hi - centre)
        fb[m] = np.maximum(0, np.minimum(rising, falling)) * 2 / (hi - lo)
    return fb


def _logmel_by_hand(y: np.ndarray, sr: int, n_mels: int = 64) -> np.ndarray:
    win = round(0.040 * sr)
    hop = round(0.020 * sr)
    n_fft = 2 ** math.ceil(math.log2(win))
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    window = np.zeros(n_fft)
    window[(n_fft - win) // 2:(n_fft - win) // 2 + win] = hann  # centred in the FFT frame
    padded = np.concatenate([np.zeros(n_fft // 2), y.astype(np.float64), np.zeros(n_fft // 2)])
    n_frames = 1 + len(y) // hop
    frames = np.stack([padded[t * hop:t * hop + n_fft] for t in range(n_frames)])  # (T, n_fft)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (T, freq)
    return np.log(power @ _slaney_filters(sr, n_fft, n_mels).T + np.spacing(1))  # (T, mels)


# --------------------------------------------------------------------------------------------
# The formula
# --------------------------------------------------------------------------------------------


def test_frame_spec_is_the_baselines():
    s = frame_spec(44100)
    assert (s.win, s.hop, s.n_fft, s.n_mels) == (1764, 882, 2048, 64)
    assert (frame_spec(22050).win, frame_spec(22050).hop, frame_spec(22050).n_fft) == (882, 441, 1024)
    assert (frame_spec(16000).win, frame_spec(16000).hop, frame_spec(16000).n_fft) == (640, 320, 1024)
    for sr in (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000):
        s = frame_spec(sr)
        assert s.win == int(round(sr * 0.040)) and s.hop == int(round(sr * 0.020))
        assert s.n_fft == 2 ** int(np.ceil(np.log(s.win) / np.log(2.0)))  # the baseline's expression
    assert frame_spec(44100).n_frames(44100) == 1 + 44100 // 882
    with pytest.raises(ValueError, match="too low"):
        frame_spec(10)


@pytest.mark.filterwarnings("ignore:Empty filters")
def test_filters_and_window_are_librosas():
    from utils.features.logmel import _window

    for sr in (8000, 16000, 22050, 32000, 44100, 48000):
        for n_mels in (40, 64, 128):
            s = frame_spec(sr, n_mels)
            ours = mel_filters(sr, s.n_fft, n_mels)
            assert np.array_equal(ours, librosa.filters.mel(sr=sr, n_fft=s.n_fft, n_mels=n_mels))  # bit for bit
            np.testing.assert_allclose(ours, _slaney_filters(sr, s.n_fft, n_mels), rtol=1e-5, atol=1e-9)
        hann = librosa.filters.get_window("hann", s.win, fftbins=True)
        assert np.array_equal(_window(s.win, s.n_fft), librosa.util.pad_center(hann, size=s.n_fft))


def _bank_in_worker(sr: int) -> tuple[np.ndarray, bool]:
    """Pool task: this process's mel bank for ``sr``, and whether getting it imported ``librosa.filters``."""
    s = frame_spec(sr)
    return np.array(mel_filters(sr, s.n_fft, s.n_mels)), "librosa.filters" in sys.modules


def test_spawned_workers_get_the_parents_mel_banks(monkeypatch):
    """Stage 2's workers adopt the parent's banks: librosa's, bit for bit, without importing ``librosa.filters``
    again (1.0-1.3 s of CPU per process). Spawn, where nothing is inherited; fork inherits the cache anyway."""
    params = {"n_mels": 64, "win_sec": 0.04, "hop_sec": 0.02}
    banks = logmel_workers._warm_up({44100, 0}, params)  # 0: rate not probed, left to the worker
    assert list(banks) == [(44100, 2048, 64)]
    spawn = multiprocessing.get_context("spawn")
    monkeypatch.setattr(logmel_workers.multiprocessing, "get_context", lambda method=None: spawn)
    with logmel_workers._pool(1, banks) as pool:
        bank, imported = pool.apply(_bank_in_worker, (44100,))
    assert not imported
    assert np.array_equal(bank, librosa.filters.mel(sr=44100, n_fft=2048, n_mels=64))
    with pytest.raises(ValueError, match="shape"):  # a bank for other settings is refused, not used
        use_mel_filters({(22050, 1024, 64): bank})


@pytest.mark.parametrize("sr", RATES)
def test_formula_by_hand(sr):
    """The formula itself, not two libraries agreeing: every implementation equals a hand-written one."""
    y = _signal("noise16", sr, 1.3, seed=sr)
    expected = _logmel_by_hand(y, sr)  # (T, 64) float64
    assert expected.shape == (1 + len(y) // round(0.02 * sr), 64)
    implementations = {"librosa": logmel_librosa, "numpy+torch.fft": logmel_numpy, "torch": logmel_torch,
                       "numpy+scipy.fft": lambda y, sr: logmel_numpy(y, sr, fft="scipy"), "default": logmel}
    for name, fn in implementations.items():
        got = fn(y, sr)
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() <= 1e-4, name


@pytest.mark.parametrize("kind", ["noise16", "tone16", "lowpass16", "lsb16", "tiny", "zeros"])
@pytest.mark.parametrize("sr", RATES)
def test_implementations_match_librosa(kind, sr):
    y = _signal(kind, sr, 0.9, seed=1)
    ref = logmel_librosa(y, sr)
    assert ref.shape == (1 + len(y) // frame_spec(sr).hop, 64)
    for got in (logmel_numpy(y, sr), logmel_numpy(y, sr, fft="scipy"), logmel_torch(y, sr)):
        assert got.shape == ref.shape and got.dtype == np.float32
        assert np.abs(got - ref).max() <= 1e-4
    if kind == "zeros":
        assert np.allclose(ref, np.log(np.spacing(1)))


def test_cpu_path_runs_single_threaded_and_restores_settings():
    import torch
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before_torch, before_blas = torch.get_num_threads(), blas_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            assert torch.get_num_threads() == 1 and set(blas_threads()) <= {1}
        assert torch.get_num_threads() == 2 and blas_threads() == before_blas
        logmel(_signal("noise16", 16000, 0.5), 16000)
        assert torch.get_num_threads() == 2 and blas_threads() == before_blas
    finally:
        torch.set_num_threads(before_torch)


def test_torch_batch_equals_single_clips():
    sr = 22050
    ys = [_signal("noise16", sr, s, seed=i) for i, s in enumerate((0.5, 2.0, 1.01, 0.05))]
    batch = logmel_torch_batch(ys, sr, "cpu")
    for y, got in zip(ys, batch, strict=True):
        assert got.shape == (1 + len(y) // 441, 64)
        assert np.abs(got - logmel_librosa(y, sr)).max() <= 1e-4
    assert logmel_torch_batch([], sr) == []


def test_other_settings_follow_the_formula():
    y = _signal("noise16", 16000, 1.0)
    got = logmel_numpy(y, 16000, n_mels=40, win_sec=0.025, hop_sec=0.010)
    ref = logmel_librosa(y, 16000, n_mels=40, win_sec=0.025, hop_sec=0.010)
    assert got.shape == (1 + 16000 // 160, 40)
    assert np.abs(got - ref).max() <= 1e-4
    long = _signal("noise16", 16000, 7.0)  # more frames than one block
    assert np.abs(logmel_numpy(long, 16000) - logmel_librosa(long, 16000)).max() <= 1e-4
    with pytest.raises(ValueError, match="mono"):
        logmel_numpy(np.zeros((2, 100), np.float32), 16000)
    with pytest.raises(ValueError, match="fft must be"):
        logmel_numpy(y, 16000, fft="fftw")


# --------------------------------------------------------------------------------------------
# Audio loading
# --------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # audioread's imports, via librosa.load
def test_load_audio_mono_native_rate(tmp_path):
    stereo = np.stack([_signal("noise16", 22050, 1.0, 1), _signal("tone16", 22050, 1.0, 2)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 22050, subtype="PCM_16")
    sf.write(tmp_path / "s.flac", stereo, 22050, subtype="PCM_16")
    sf.write(tmp_path / "f.wav", stereo, 22050, subtype="FLOAT")
    for name in ("s.wav", "s.flac", "f.wav"):
        y, sr = load_audio(tmp_path / name)
        assert sr == 22050 and y.dtype == np.float32 and y.shape == (22050,)
        ref, ref_sr = librosa.load(tmp_path / name, sr=None, mono=True)
        assert ref_sr == sr and np.array_equal(y, ref)  # bit-identical to the baseline's loading
        np.testing.assert_allclose(y, stereo.mean(axis=1), atol=1e-6)


def test_load_audio_errors_name_the_file(tmp_path):
    (tmp_path / "garbage.wav").write_bytes(b"\x00not a wav file" * 100)
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "zero.wav", np.zeros((0, 1), np.float32), 16000)
    nan = np.full(100, np.nan, np.float32)
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    cases = {"garbage.wav": "undecodable", "empty.wav": "empty file", "zero.wav": "zero-length",
             "nan.wav": "NaN", "missing.wav": "not accessible"}
    for name, reason in cases.items():
        with pytest.raises(AudioReadError, match=reason) as info:
            load_audio(tmp_path / name)
        assert name in str(info.value) and isinstance(info.value, DataError)
    with pytest.raises(AudioReadError, match="directory"):
        load_audio(tmp_path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # audioread's imports
def test_load_audio_other_formats_fall_back_to_librosa(tmp_path, monkeypatch):
    import utils.data.audio

    calls = []
    real = librosa.load
    monkeypatch.setattr(librosa, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    (tmp_path / "clip.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A " + b"\x00" * 200)
    with pytest.raises(AudioReadError, match="librosa") as info:
        load_audio(tmp_path / "clip.m4a")
    assert "clip.m4a" in str(info.value) and len(calls) == 1
    (tmp_path / "clip.wav").write_bytes(b"\x00" * 200)  # a format soundfile owns: no second opinion
    with pytest.raises(AudioReadError, match="undecodable"):
        load_audio(tmp_path / "clip.wav")
    assert len(calls) == 1 and utils.data.audio._soundfile_format(tmp_path / "a.FLAC")


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def _expected(root: Path, row: dict) -> np.ndarray:
    y, sr = load_audio(root / row["path"])
    return logmel_librosa(y, sr)


def test_extract_split_one_dataset_per_fid(tmp_path):
    rows = _make_split(tmp_path, 7)
    out = tmp_path / "development_audio_logmels.hdf5"
    summary = extract_split(rows, tmp_path, out, tmp_path / "skipped.csv", workers=2, progress=False)
    assert (summary.n_clips, summary.n_computed, summary.n_reused, summary.skipped) == (7, 7, 0, [])
    with h5py.File(out, "r") as h5:
        assert sorted(h5) == sorted(r["fid"] for r in rows)
        assert h5.attrs["n_mels"] == 64 and h5.attrs["formula"] == FORMULA
        assert h5.attrs["win_sec"] == 0.040 and h5.attrs["hop_sec"] == 0.020
        lengths = []
        for row in rows:
            feat = h5[row["fid"]]
            y, sr = load_audio(tmp_path / row["path"])
            assert feat.dtype == np.float32 and feat.shape == (1 + len(y) // frame_spec(sr).hop, 64)
            assert feat.attrs["sr"] == sr == row["sample_rate"]
            assert np.abs(feat[()] - logmel_librosa(y, sr)).max() <= 1e-4
            lengths.append(feat.shape[0])
    assert (summary.min_frames, summary.max_frames) == (min(lengths), max(lengths))
    assert not parts_dir_for(out).exists()
    assert not (tmp_path / "skipped.csv").exists()  # nothing to report
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_batched_path_matches_per_clip(tmp_path):
    """The GPU code path (decode in a pool, torch batches per sample rate), run on the CPU."""
    rows = _make_split(tmp_path, 8)
    per_clip = tmp_path / "a.hdf5"
    extract_split(rows, tmp_path, per_clip, tmp_path / "s.csv", workers=2, progress=False)
    for workers in (1, 2):
        batched = tmp_path / f"b{workers}.hdf5"
        summary = extract_split(rows, tmp_path, batched, tmp_path / "s.csv", workers=workers, device="cpu",
                                batched=True, progress=False)
        assert summary.n_computed == 8
        a, b = _read_h5(per_clip), _read_h5(batched)
        assert a.keys() == b.keys()
        for fid in a:
            assert a[fid].shape == b[fid].shape and np.abs(a[fid] - b[fid]).max() <= 1e-4


def test_unreadable_clips_are_skipped_and_reported(tmp_path):
    rows = _make_split(tmp_path, 4)
    (tmp_path / "development" / "garbage.wav").write_bytes(b"RIFF" + os.urandom(2000))
    (tmp_path / "development" / "empty.wav").write_bytes(b"")
    rows += [_row(tmp_path, "development", 90, "garbage.wav", 44100),
             _row(tmp_path, "development", 91, "empty.wav", 44100)]
    skipped = tmp_path / "development_skipped.csv"
    stage1 = {"fname": "lost.wav", "path": "", "reason": "no matching audio file"}
    write_rows(skipped, [stage1], SKIPPED_COLUMNS)
    out = tmp_path / "out.hdf5"

    summary = extract_split(rows, tmp_path, out, skipped, workers=2, progress=False)
    assert summary.n_computed == 4 and sorted(r["fname"] for r in summary.skipped) == ["empty.wav", "garbage.wav"]
    assert sorted(_read_h5(out)) == sorted(r["fid"] for r in rows[:4])
    report = {r["fname"]: r for r in read_rows(skipped)}
    assert report["lost.wav"] == stage1  # stage 1's rows are kept
    assert report["empty.wav"]["reason"].startswith(SKIP_PREFIX) and "empty" in report["empty.wav"]["reason"]
    assert report["garbage.wav"]["path"] == "development/garbage.wav"

    # The same failures again: still one row per clip, and the HDF5 is left alone.
    mtime = out.stat().st_mtime_ns
    summary = extract_split(rows, tmp_path, out, skipped, workers=1, progress=False)
    assert (summary.n_computed, summary.n_reused, len(summary.skipped)) == (0, 4, 2)
    assert len(read_rows(skipped)) == 3 and out.stat().st_mtime_ns == mtime

    # Repaired clip: computed, added, and its row leaves the report.
    _write_clip(tmp_path / "development" / "garbage.wav", 16000, 1.0, 1, seed=5)
    summary = extract_split(rows, tmp_path, out, skipped, workers=1, progress=False)
    assert (summary.n_computed, summary.n_reused, len(summary.skipped)) == (1, 4, 1)
    assert "dev_0090" in _read_h5(out)
    assert sorted(r["fname"] for r in read_rows(skipped)) == ["empty.wav", "lost.wav"]


def test_rerun_is_up_to_date_and_new_clips_reuse_the_rest(tmp_path, capsys):
    rows = _make_split(tmp_path, 5)
    out = tmp_path / "out.hdf5"
    extract_split(rows, tmp_path, out, tmp_path / "s.csv", workers=1, progress=False)
    before = _read_h5(out)
    mtime = out.stat().st_mtime_ns
    capsys.readouterr()

    summary = extract_split(rows, tmp_path, out, tmp_path / "s.csv", workers=1, progress=False)
    assert summary.up_to_date and summary.n_computed == 0 and summary.n_reused == 5
    assert "up to date" in capsys.readouterr().out
    assert out.stat().st_mtime_ns == mtime

    _write_clip(tmp_path / "development" / "new.wav", 44100, 1.0, 2, seed=9)
    rows2 = rows + [_row(tmp_path, "development", 50, "new.wav", 44100)]
    summary = extract_split(rows2, tmp_path, out, tmp_path / "s.csv", workers=1, progress=False)
    assert (summary.n_computed, summary.n_reused) == (1, 5)
    after = _read_h5(out)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert np.abs(after["dev_0050"] - _expected(tmp_path, rows2[-1])).max() <= 1e-4

    # A clip dropped from the table is dropped from the file.
    summary = extract_split(rows2[1:], tmp_path, out, tmp_path / "s.csv", workers=1, progress=False)
    assert summary.n_computed == 0 and sorted(_read_h5(out)) == sorted(r["fid"] for r in rows2[1:])


def test_other_settings_or_a_damaged_file_rebuild(tmp_path):
    rows = _make_split(tmp_path, 3)
    out = tmp_path / "out.hdf5"
    extract_split(rows, tmp_path, out, tmp_path / "s.csv", workers=1, progress=False)
    summary = extract_split(rows, tmp_path, out, tmp_path / "s.csv", workers=1, progress=False, n_mels=32)
    assert summary.n_computed == 3
    with h5py.File(out, "r") as h5:
        assert h5.attrs["n_mels"] == 32 and all(h5[k].shape[1] == 32 for k in h5)

    out.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)  # a corrupt HDF5 left by someone else
    summary = extract_split(rows, tmp_path, out, tmp_path / "s.csv", workers=1, progress=False)
    assert summary.n_computed == 3 and len(_read_h5(out)) == 3

    # Not one readable clip: an error, and the existing file is never replaced by an empty one.
    (tmp_path / "development" / "bad.wav").write_bytes(b"junk" * 10)
    bad = [_row(tmp_path, "development", 9, "bad.wav", 16000)]
    with pytest.raises(DataError, match="left as it was"):
        extract_split(bad, tmp_path, out, tmp_path / "s.csv", workers=1, progress=False, n_mels=40)
    assert len(_read_h5(out)) == 3


def test_cuda_without_cuda_is_a_clear_error(tmp_path, monkeypatch):
    import torch

    from utils.base.config import ConfigError

    rows = _make_split(tmp_path, 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--device cpu"):
        extract_split(rows, tmp_path, tmp_path / "o.hdf5", tmp_path / "s.csv", device="cuda", progress=False)
    assert not parts_dir_for(tmp_path / "o.hdf5").exists()


def test_duplicate_fids_are_refused(tmp_path):
    rows = _make_split(tmp_path, 2)
    with pytest.raises(DataError, match="duplicate fid"):
        extract_split(rows + rows[:1], tmp_path, tmp_path / "o.hdf5", tmp_path / "s.csv", progress=False)


# --------------------------------------------------------------------------------------------
# The real script: interrupted with SIGKILL, then resumed
# --------------------------------------------------------------------------------------------


def _script(conf: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--conf", str(conf), "--workers", "1", "--no-progress", *extra]


def _run_until_blocked(cmd: list[str], parts: Path, n_parts: int) -> None:
    """Start ``cmd``, wait until it has saved ``n_parts`` parts (it then blocks on a FIFO), SIGKILL it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while len(list(parts.glob("*.npz"))) < n_parts:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the script made no progress"
            time.sleep(0.05)
        time.sleep(0.3)  # it is now stuck opening the FIFO: no further part can appear
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe to block the script mid-run")
def test_script_resumes_after_sigkill(tmp_path):
    rows = _make_split(tmp_path, 30)
    conf = tmp_path / "conf.yaml"
    out = tmp_path / "development_audio_logmels.hdf5"
    parts = parts_dir_for(out)
    # Clip 14 is a named pipe: opening it blocks, so the run is killed after exactly 14 clips.
    blocker = tmp_path / rows[14]["path"]
    blocker.unlink()
    os.mkfifo(blocker)

    _run_until_blocked(_script(conf), parts, 14)
    assert not out.exists()  # no final file until every clip is done
    assert len(list(parts.glob("*.npz"))) == 14

    blocker.unlink()
    _write_clip(blocker, RATES[14 % 3], 1.0, 1, seed=14)
    clean_dir = tmp_path / "clean"  # a clean, uninterrupted run of the same code path (1 worker)
    extract_split(rows, tmp_path, clean_dir / out.name, clean_dir / "skipped.csv", workers=1, progress=False)
    clean = _read_h5(clean_dir / out.name)
    assert len(clean) == 30

    # Tamper with the interrupted run's leftovers: a canary part proves finished clips are reused,
    # torn and corrupt parts must be recomputed, stale temporary files must go.
    part_files = {r["fid"]: parts / f"{r['fid']}.npz" for r in rows[:14]}
    canary = np.full_like(clean[rows[0]["fid"]], 7.0)
    with open(part_files[rows[0]["fid"]], "wb") as stream:
        np.savez(stream, feat=canary, sr=np.int64(rows[0]["sample_rate"]))
    torn = part_files[rows[1]["fid"]]
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    corrupt = part_files[rows[2]["fid"]]
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the feature array: CRC mismatch
    corrupt.write_bytes(bytes(data))
    stale = [parts / f".{rows[20]['fid']}.npz.tmp-{_dead_pid()}", tmp_path / f".{out.name}.tmp-{_dead_pid()}"]
    for path in stale:
        path.write_bytes(b"half-written")

    done = subprocess.run(_script(conf), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "computed 18 " in done.stdout and "reused 12" in done.stdout  # 30 - 14 + torn + corrupt
    final = _read_h5(out)
    assert final.keys() == clean.keys()
    assert np.array_equal(final[rows[0]["fid"]], canary)  # reused, not recomputed
    for fid in clean.keys() - {rows[0]["fid"]}:
        assert np.array_equal(final[fid], clean[fid]), fid
    assert not parts.exists() and not any(p.exists() for p in stale)

    # Interrupted again while adding clips: the old complete file stays in place, untouched.
    new_rows = []
    for i in range(30, 33):
        fname = f"extra {i}.wav"
        _write_clip(tmp_path / "development" / fname, 44100, 1.0, 1, seed=i)
        new_rows.append(_row(tmp_path, "development", i, fname, 44100))
    os.mkfifo(tmp_path / "development" / "extra block.wav")
    new_rows.insert(1, _row(tmp_path, "development", 40, "extra block.wav", 44100))
    write_rows(tmp_path / "development_audio.csv", rows + new_rows, AUDIO_COLUMNS)
    before = out.read_bytes()
    _run_until_blocked(_script(conf), parts, 1)
    assert out.read_bytes() == before

    (tmp_path / "development" / "extra block.wav").unlink()
    _write_clip(tmp_path / "development" / "extra block.wav", 16000, 0.7, 2, seed=40)
    done = subprocess.run(_script(conf), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "computed 3 " in done.stdout and "reused 31" in done.stdout
    final2 = _read_h5(out)
    assert len(final2) == 34 and all(np.array_equal(final2[k], final[k]) for k in final)

    done = subprocess.run(_script(conf), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "up to date" in done.stdout


@pytest.mark.slow
def test_script_reports_usage_errors(tmp_path):
    _make_split(tmp_path, 1)
    done = subprocess.run(_script(tmp_path / "conf.yaml", "--splits", "nope"), capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 2 and "nope" in done.stderr and "development" in done.stderr
    (tmp_path / "development_audio.csv").unlink()
    done = subprocess.run(_script(tmp_path / "conf.yaml"), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "01_clotho_dataset.py" in done.stderr
