"""Stage 2's waveform feature set (features.kind: waveform): mono, resampled, (samples, 1), in its own file beside
the log-mels, resumable like them."""

import h5py
import numpy as np
import pytest
import soundfile as sf
import yaml

from utils.base import paths
from utils.base.config import load_config
from utils.features.extract import _waveform_params, extract_split
from utils.features.parts import open_parts_dir, part_path, parts_dir_for, save_part


def write_clips(folder):
    """Three clips: a 1 kHz sine at 22.05 kHz (stereo), a 3 kHz sine at 16 kHz, an empty file."""
    folder.mkdir(parents=True)
    rows = []
    for i, (sr, freq, seconds, channels) in enumerate([(22050, 1000, 1.0, 2), (16000, 3000, 0.5, 1),
                                                       (16000, 0, 0.0, 1)]):
        t = np.arange(int(sr * seconds)) / sr
        y = 0.5 * np.sin(2 * np.pi * freq * t)
        sf.write(folder / f"c{i}.wav", np.stack([y] * channels, axis=1) if channels == 2 else y, sr)
        rows.append({"fid": f"f{i}", "fname": f"c{i}.wav", "path": f"audio/c{i}.wav", "sample_rate": sr})
    return rows


def peak_hz(y, sr):
    spectrum = np.abs(np.fft.rfft(y))
    return np.argmax(spectrum) * sr / len(y)


def test_waveforms_are_resampled_mono_and_resumable(tmp_path):
    rows = write_clips(tmp_path / "audio")
    out, skipped = tmp_path / "w.hdf5", tmp_path / "skipped.csv"
    summary = extract_split(rows, tmp_path, out, skipped, workers=1, progress=False, kind="waveform",
                            sample_rate=16000)
    assert summary.n_computed == 2 and len(summary.skipped) == 1  # the empty clip is reported, not stored
    with h5py.File(out, "r") as h5:
        a, b = h5["f0"][()], h5["f1"][()]
        assert h5.attrs["kind"] == "waveform" and h5.attrs["sample_rate"] == 16000
    assert a.shape == (16000, 1) and b.shape == (8000, 1) and a.dtype == np.float32
    assert peak_hz(a[:, 0], 16000) == pytest.approx(1000, abs=2)  # 22.05 kHz -> 16 kHz keeps the pitch
    assert peak_hz(b[:, 0], 16000) == pytest.approx(3000, abs=2)
    assert np.abs(a).max() == pytest.approx(0.5, abs=0.02)  # stereo averaged, not summed
    again = extract_split(rows[:2], tmp_path, out, skipped, workers=1, progress=False, kind="waveform",
                          sample_rate=16000)
    assert again.up_to_date
    # A run killed after one clip left its part (a marker here): reused, the other clip computed.
    out8 = tmp_path / "w8.hdf5"
    parts = parts_dir_for(out8)
    open_parts_dir(parts, _waveform_params(8000))
    marker = np.full((10, 1), 0.25, np.float32)
    save_part(part_path(parts, "f0"), marker, 8000)
    resumed = extract_split(rows[:2], tmp_path, out8, skipped, workers=1, progress=False, kind="waveform",
                            sample_rate=8000)
    assert resumed.n_reused == 1 and resumed.n_computed == 1
    with h5py.File(out8, "r") as h5:
        assert np.array_equal(h5["f0"][()], marker) and h5["f1"].shape == (4000, 1)


def test_the_two_feature_sets_have_their_own_files(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"data": {"dataset_dir": str(tmp_path)}}))
    logmel = load_config(tmp_path / "c.yaml")
    wave = load_config(tmp_path / "c.yaml", ["features.kind=waveform", "features.sample_rate=48000"])
    assert paths.features(logmel, "development") == paths.logmels(logmel, "development")
    assert paths.features(wave, "development").name == "development_audio_waveforms_48000hz.hdf5"
    assert paths.features(wave, "development") != paths.logmels(wave, "development")
