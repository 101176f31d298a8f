"""Stage 0: the synthetic demo dataset (utils/demo/, preprocessing/00_make_demo_dataset.py)."""

from __future__ import annotations

import csv
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT as REPO

from utils.base.config import CLOTHO_SPLITS, ConfigError
from utils.base.errors import DataError
from utils.demo.captions import conjugate, make_captions
from utils.demo.dataset import (
    CSV_HEADER,
    IN_PROGRESS,
    MANIFEST,
    demo_dataset_complete,
    make_demo_dataset,
    plan_dataset,
    split_sizes,
)
from utils.demo.names import canonical_name
from utils.demo.specs import ClipSpec, Layer, all_specs
from utils.demo.synth import synthesize_clip

SCRIPT = REPO / "preprocessing" / "00_make_demo_dataset.py"
SHORT = (2.0, 3.0)  # clip durations (s) used by these tests
SR = 16000

HIGH = re.compile(r"\b(high|shrill)\b")  # matches 'high-pitched' but not 'higher'
MEDIUM = re.compile(r"\b(medium|mid)-")
LOW = re.compile(r"\b(low|deep)\b")
RISING = re.compile(r"\b(rise|rises|rising|climbs?|climbing|upward|going up|goes up|go up|higher)\b")
FALLING = re.compile(r"\b(fall|falls|falling|drops?|dropping|downward|going down|goes down|go down|lower)\b")
STEADY = re.compile(r"\b(steady|constant|same|without changing|one steady)\b")


# --------------------------------------------------------------------------------------------
# Helpers and fixtures
# --------------------------------------------------------------------------------------------


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.reader(stream))


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A 12-clip demo dataset with 2-3 s clips."""
    root = tmp_path_factory.mktemp("demo12")
    make_demo_dataset(root, n_clips=12, seed=0, progress=False, duration_range=SHORT)
    return root


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> Path:
    """A 72-clip demo dataset with 1.5-2 s clips, for checks that need many attribute values."""
    root = tmp_path_factory.mktemp("demo72")
    make_demo_dataset(root, n_clips=72, seed=3, progress=False, duration_range=(1.5, 2.0))
    return root


def spectrum(audio: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (Hz) and mean power spectrum of a mono signal."""
    frames = np.lib.stride_tricks.sliding_window_view(audio, 2048)[::512] * np.hanning(2048)
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0)
    return np.fft.rfftfreq(2048, 1 / sr), power


def dominant_hz(audio: np.ndarray, sr: int) -> float:
    freqs, power = spectrum(audio, sr)
    return float(freqs[np.argmax(power)])


def centroid_hz(audio: np.ndarray, sr: int) -> float:
    freqs, power = spectrum(audio, sr)
    return float((freqs * power).sum() / power.sum())


def frame_rms(audio: np.ndarray, sr: int, frame_s: float = 0.01) -> np.ndarray:
    n = int(frame_s * sr)
    frames = audio[: len(audio) // n * n].reshape(-1, n)
    return np.sqrt((frames**2).mean(axis=1))  # (frames,)


def onsets_per_second(audio: np.ndarray, sr: int) -> float:
    """Rising crossings of a threshold halfway (in dB) between quiet and loud frames."""
    db = 20 * np.log10(frame_rms(audio, sr) + 1e-9)
    threshold = (np.percentile(db, 5) + np.percentile(db, 95)) / 2
    above = db > threshold
    return float(np.sum(above[1:] & ~above[:-1])) / (len(audio) / sr)


def pitch_ratio(audio: np.ndarray, sr: int) -> float:
    """Median peak frequency of the last third of the tonal frames over that of the first third.

    Frames whose spectral peak does not stand clearly above the noise floor (gaps between bell
    strikes or beeps) are left out.
    """
    frames = np.lib.stride_tricks.sliding_window_view(audio, 1024)[::256] * np.hanning(1024)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (frames, bins)
    tonal = power.max(axis=1) > 1000 * np.median(power, axis=1)
    peaks = np.fft.rfftfreq(1024, 1 / sr)[power[tonal].argmax(axis=1)]
    third = len(peaks) // 3
    return float(np.median(peaks[-third:]) / np.median(peaks[:third]))


def level_spread_db(audio: np.ndarray, sr: int) -> float:
    """Difference between loud (95th percentile) and quiet (5th) 10 ms frames, in dB."""
    db = 20 * np.log10(frame_rms(audio, sr) + 1e-9)
    return float(np.percentile(db, 95) - np.percentile(db, 5))


def load_mono(path: Path) -> tuple[np.ndarray, int]:
    audio, sr = sf.read(path, dtype="float64", always_2d=True)
    return audio.mean(axis=1), sr


# --------------------------------------------------------------------------------------------
# Layout and file format
# --------------------------------------------------------------------------------------------


def test_split_sizes():
    assert split_sizes(240) == {"development": 144, "validation": 48, "evaluation": 48}
    assert split_sizes(9) == {"development": 5, "validation": 2, "evaluation": 2}
    assert split_sizes(3) == {"development": 1, "validation": 1, "evaluation": 1}
    with pytest.raises(ConfigError, match="at least 3 clips"):
        split_sizes(2)


def test_split_sizes_held_out():
    assert split_sizes(560, held_out=80) == {"development": 400, "validation": 80, "evaluation": 80}
    assert split_sizes(3, held_out=1) == {"development": 1, "validation": 1, "evaluation": 1}
    for bad in (0, 2):  # none held out; nothing left for development
        with pytest.raises(ConfigError, match="--held-out must be 1 to 1 for 3 clips"):
            split_sizes(3, held_out=bad)


def test_csv_format_and_five_captions(small):
    counts = manifest(small)["counts"]
    assert counts == split_sizes(12)
    for split in CLOTHO_SPLITS:
        raw = (small / f"clotho_captions_{split}.csv").read_text(encoding="utf-8")
        assert raw.splitlines()[0] == ",".join(CSV_HEADER)
        rows = read_csv(small / f"clotho_captions_{split}.csv")
        assert rows[0] == CSV_HEADER
        assert len(rows) - 1 == counts[split]
        for row in rows[1:]:
            assert len(row) == 6
            captions = row[1:]
            assert len(set(captions)) == 5, row
            for caption in captions:
                assert 8 <= len(caption.split()) <= 20, caption
                assert caption[0].isupper() and caption.endswith("."), caption
    # Names and captions with commas survive the round trip through proper quoting.
    names = [row[0] for s in CLOTHO_SPLITS for row in read_csv(small / f"clotho_captions_{s}.csv")[1:]]
    assert any("," in name for name in names)


def test_every_csv_name_resolves_to_one_file(small):
    for split in CLOTHO_SPLITS:
        on_disk = [p.name for p in (small / split).iterdir()]
        in_csv = [row[0] for row in read_csv(small / f"clotho_captions_{split}.csv")[1:]]
        disk_keys = {canonical_name(n): n for n in on_disk}
        assert len(disk_keys) == len(on_disk), "two files share a canonical name"
        assert sorted(canonical_name(n) for n in in_csv) == sorted(disk_keys)
        # The plain recipe (html.unescape + strip) resolves all but the trailing-space-before-.wav case.
        plain = {html.unescape(n).strip() for n in on_disk}
        unresolved = [n for n in in_csv if html.unescape(n).strip() not in plain]
        assert all(Path(disk_keys[canonical_name(n)]).stem.endswith(" ") for n in unresolved)


def test_odd_names_of_every_kind(small):
    disk = [p.name for s in CLOTHO_SPLITS for p in (small / s).iterdir()]
    csv_names = [row[0] for s in CLOTHO_SPLITS for row in read_csv(small / f"clotho_captions_{s}.csv")[1:]]
    for char in " ,()#'&":
        assert any(char in name for name in disk), f"no file name contains {char!r}"
    plain = [n for n in disk if re.fullmatch(r"[a-z]+_[a-z]+_\d{3}\.wav", n)]
    assert plain, "no plain names"
    assert any("&amp;" in n for n in csv_names)
    assert any("&#39;" in n for n in csv_names)
    assert any(n != n.strip() for n in csv_names)
    assert any(n.endswith(" .wav") for n in disk)
    assert any("&amp;" in n for n in disk)
    for name in disk + csv_names:
        assert not set('/:?*"<>|\\') & set(name), name
        assert name.strip().endswith(".wav")
    keys = [canonical_name(n).casefold() for n in csv_names]
    assert len(set(keys)) == len(keys)


def test_wavs_are_pcm16_with_expected_durations_and_formats(small):
    info = [(clip, sf.info(small / clip["split"] / clip["file"])) for clip in manifest(small)["clips"]]
    assert len(info) == 12
    for clip, meta in info:
        assert meta.subtype == "PCM_16" and meta.format == "WAV"
        assert SHORT[0] - 1e-3 <= meta.duration <= SHORT[1] + 1e-3
        assert abs(meta.duration - clip["duration"]) < 1e-3
        assert (meta.samplerate, meta.channels) == (clip["sample_rate"], clip["channels"])
        audio, _ = sf.read(small / clip["split"] / clip["file"], dtype="int16")
        assert np.count_nonzero(audio) > 0.5 * audio.size, "digitally silent stretches"
        assert np.abs(audio.astype(np.int32)).max() < 32767, "clipped"
    assert any(meta.channels == 2 for _, meta in info)
    assert any(meta.samplerate != SR for _, meta in info)
    assert sum(meta.samplerate == SR and meta.channels == 1 for _, meta in info) > len(info) / 2


def test_deterministic_bytes(small, tmp_path):
    again = tmp_path / "again"
    make_demo_dataset(again, n_clips=12, seed=0, progress=False, duration_range=SHORT)
    assert all_files(again) == all_files(small)
    other = tmp_path / "other"
    make_demo_dataset(other, n_clips=12, seed=1, progress=False, duration_range=SHORT)
    assert (other / "clotho_captions_development.csv").read_bytes() != \
        (small / "clotho_captions_development.csv").read_bytes()


def test_full_size_plan_is_varied_and_valid():
    clips = plan_dataset(240, seed=0)
    assert [sum(c.split == s for c in clips) for s in CLOTHO_SPLITS] == [144, 48, 48]
    assert len({c.spec for c in clips}) >= 220, "too many clips share all their attributes"
    assert {c.spec.main.source for c in clips} == {"whistle", "buzz", "bell", "chirps", "clicks", "hiss", "rumble"}
    val_specs = [c.spec for c in clips if c.split == "validation"]
    assert len(set(val_specs)) == len(val_specs), "validation clips must be distinguishable"
    for clip in clips:
        assert len(set(clip.captions)) == 5
        assert all(8 <= len(c.split()) <= 20 for c in clip.captions)
    plain = sum(bool(re.fullmatch(r"[a-z]+_[a-z]+_\d{3}\.wav", c.disk_name)) for c in clips)
    assert 0.5 < plain / len(clips) < 0.75
    assert 5 <= sum(c.sample_rate != 16000 for c in clips) <= 30
    assert 5 <= sum(c.channels == 2 for c in clips) <= 30


# --------------------------------------------------------------------------------------------
# Captions describe the sound
# --------------------------------------------------------------------------------------------


def test_conjugate():
    assert [conjugate("rise", f) for f in ("sg", "pl", "ing")] == ["rises", "rise", "rising"]
    assert conjugate("buzz", "sg") == "buzzes" and conjugate("go", "sg") == "goes"
    assert conjugate("drop", "ing") == "dropping" and conjugate("die", "ing") == "dying"
    assert conjugate("get", "ing") == "getting" and conjugate("continue", "ing") == "continuing"


def test_captions_are_paraphrases_of_the_attributes():
    rng = np.random.default_rng(0)
    spec = ClipSpec(Layer("whistle", "high", "rising", "continuous"), "fade_out")
    for caption in make_captions(spec, rng):
        text = caption.lower()
        assert HIGH.search(text) and RISING.search(text), caption
        assert not LOW.search(text) and not FALLING.search(text), caption
        assert re.search(r"fad|die|quieter", text), caption
        assert re.search(r"whistl|tone", text), caption
    spec = ClipSpec(Layer("clicks", "low", "steady", "fast"), "loud", Layer("hiss", None, "steady", "continuous"))
    for caption in make_captions(spec, rng):
        text = caption.lower()
        assert re.search(r"rapid|quick|fast", text) and re.search(r"loud|powerful|full volume", text), caption
        assert re.search(r"knock|thud|thump", text) and re.search(r"hiss|static", text), caption


def test_every_attribute_set_gets_five_captions():
    rng = np.random.default_rng(0)
    for spec in all_specs():
        captions = make_captions(spec, rng)
        assert len(set(captions)) == 5 and all(8 <= len(c.split()) <= 20 for c in captions), spec


def _caption_class(captions: list[str], patterns: dict[str, re.Pattern]) -> str | None:
    """The one class every caption names, or None if they disagree or name several."""
    found = set()
    for caption in captions:
        hits = [name for name, pattern in patterns.items() if pattern.search(caption.lower())]
        if len(hits) != 1:
            return None
        found.add(hits[0])
    return found.pop() if len(found) == 1 else None


def _tonal_clips_without_background(root: Path, sources=("whistle", "buzz", "bell")
                                    ) -> list[tuple[list[str], np.ndarray, int]]:
    captions = {}
    for split in CLOTHO_SPLITS:
        for row in read_csv(root / f"clotho_captions_{split}.csv")[1:]:
            captions[canonical_name(row[0])] = row[1:]
    out = []
    for clip in manifest(root)["clips"]:
        attrs = clip["attributes"]
        if attrs["background"] is None and attrs["main"]["source"] in sources:
            audio, sr = load_mono(root / clip["split"] / clip["file"])
            out.append((captions[canonical_name(clip["csv_name"])], audio, sr))
    return out


def test_pitch_words_match_the_audio(medium):
    by_class: dict[str, list[float]] = {"high": [], "medium": [], "low": []}
    for captions, audio, sr in _tonal_clips_without_background(medium):
        label = _caption_class(captions, {"high": HIGH, "medium": MEDIUM, "low": LOW})
        assert label is not None, f"captions disagree about pitch: {captions}"
        by_class[label].append(dominant_hz(audio, sr))
    assert all(len(v) >= 2 for v in by_class.values()), {k: len(v) for k, v in by_class.items()}
    assert min(by_class["high"]) > max(by_class["medium"])
    assert min(by_class["medium"]) > max(by_class["low"])


def test_movement_words_match_the_pitch_track(medium):
    ratios: dict[str, list[float]] = {"rising": [], "falling": [], "steady": []}
    # Bells are left out: a 2 s test clip holds only one or two strikes (see the test below).
    for captions, audio, sr in _tonal_clips_without_background(medium, ("whistle", "buzz")):
        label = _caption_class(captions, {"rising": RISING, "falling": FALLING, "steady": STEADY})
        if label is not None:
            ratios[label].append(pitch_ratio(audio, sr))
    assert all(len(v) >= 2 for v in ratios.values()), {k: len(v) for k, v in ratios.items()}
    assert min(ratios["rising"]) > 1.5
    assert max(ratios["falling"]) < 1 / 1.5
    assert all(0.9 < r < 1.1 for r in ratios["steady"])


def _render(main: Layer, dynamics: str = "loud", seconds: float = 4.0) -> np.ndarray:
    return synthesize_clip(ClipSpec(main, dynamics), seconds, SR, np.random.default_rng(0))


@pytest.mark.parametrize("source,pitch", [("whistle", "medium"), ("hiss", None), ("clicks", "high")])
def test_rhythm_fast_pulses_several_times_faster_than_slow(source, pitch):
    fast = onsets_per_second(_render(Layer(source, pitch, "steady", "fast")), SR)
    slow = onsets_per_second(_render(Layer(source, pitch, "steady", "slow")), SR)
    assert 0.5 <= slow <= 2.5 and fast >= 2.5 * slow, (fast, slow)
    if source != "clicks":  # continuous sounds have no gaps; pulsed ones go down to the noise floor
        assert level_spread_db(_render(Layer(source, pitch, "steady", "continuous")), SR) < 12
        assert level_spread_db(_render(Layer(source, pitch, "steady", "slow")), SR) > 30


@pytest.mark.parametrize("movement,low,high", [("rising", 1.5, 9.0), ("falling", 0.0, 0.67), ("steady", 0.9, 1.1)])
def test_bell_strikes_follow_the_pitch_movement(movement, low, high):
    audio = _render(Layer("bell", "medium", movement, "fast"), seconds=6.0)
    assert low < pitch_ratio(audio, SR) < high


def test_dynamics_quiet_loud_and_fades():
    layer = Layer("buzz", "medium", "steady", "continuous")
    loud, quiet = _render(layer, "loud"), _render(layer, "quiet")
    assert 20 * np.log10(frame_rms(loud, SR).mean() / frame_rms(quiet, SR).mean()) > 15
    quarter = len(loud) // 4
    fade_in, fade_out = _render(layer, "fade_in"), _render(layer, "fade_out")
    assert np.sqrt(np.mean(fade_in[-quarter:] ** 2)) > 10 * np.sqrt(np.mean(fade_in[:quarter] ** 2))
    assert np.sqrt(np.mean(fade_out[:quarter] ** 2)) > 10 * np.sqrt(np.mean(fade_out[-quarter:] ** 2))


def test_sources_have_distinct_timbres():
    hiss = centroid_hz(_render(Layer("hiss", None, "steady", "continuous")), SR)
    rumble = centroid_hz(_render(Layer("rumble", None, "steady", "continuous")), SR)
    assert hiss > 3000 and rumble < 300
    freqs, whistle = spectrum(_render(Layer("whistle", "low", "steady", "continuous")), SR)
    _, buzz = spectrum(_render(Layer("buzz", "low", "steady", "continuous")), SR)
    above = freqs > 400  # well above the ~180 Hz fundamental
    assert whistle[above].sum() / whistle.sum() < 0.01
    assert buzz[above].sum() / buzz.sum() > 0.1


# --------------------------------------------------------------------------------------------
# Completeness, refusal and the script
# --------------------------------------------------------------------------------------------


def test_completeness_check_and_cleanup(tmp_path):
    root = tmp_path / "demo"
    make_demo_dataset(root, n_clips=12, progress=False, duration_range=SHORT)
    assert demo_dataset_complete(root, n_clips=12, duration_range=SHORT)
    assert not demo_dataset_complete(root, n_clips=12, seed=1, duration_range=SHORT)
    assert not demo_dataset_complete(root, n_clips=12)  # other durations
    wav = next((root / "development").iterdir())
    data = wav.read_bytes()
    wav.write_bytes(data[: len(data) // 2])  # a truncated clip
    assert not demo_dataset_complete(root, n_clips=12, duration_range=SHORT)
    wav.write_bytes(data)
    (root / MANIFEST).rename(root / IN_PROGRESS)  # a run was interrupted before writing its manifest
    assert not demo_dataset_complete(root, n_clips=12, duration_range=SHORT)
    # Regenerating with fewer clips removes the old clips; nothing stale is left behind.
    assert make_demo_dataset(root, n_clips=5, progress=False, duration_range=SHORT) == split_sizes(5)
    assert sum(len(list((root / s).iterdir())) for s in CLOTHO_SPLITS) == 5
    assert not (root / IN_PROGRESS).exists()
    assert demo_dataset_complete(root, n_clips=5, duration_range=SHORT)
    # --held-out: validation and evaluation sizes are part of what "complete" means.
    assert not demo_dataset_complete(root, n_clips=5, duration_range=SHORT, held_out=2)
    counts = make_demo_dataset(root, n_clips=5, progress=False, duration_range=SHORT, held_out=2)
    assert counts == {"development": 1, "validation": 2, "evaluation": 2}
    assert demo_dataset_complete(root, n_clips=5, duration_range=SHORT, held_out=2)


def test_refuses_to_overwrite_a_real_dataset(tmp_path):
    csv_path = tmp_path / "clotho_captions_development.csv"
    csv_path.write_text("file_name,caption_1\nreal.wav,a real caption\n", encoding="utf-8")
    with pytest.raises(DataError, match="not the demo"):
        make_demo_dataset(tmp_path, n_clips=3, progress=False, duration_range=SHORT)
    assert csv_path.read_text(encoding="utf-8").startswith("file_name,caption_1\nreal.wav")
    assert not (tmp_path / "development").exists()


def test_rejects_bad_parameters(tmp_path):
    with pytest.raises(ConfigError, match="sample rate"):
        make_demo_dataset(tmp_path, n_clips=3, sample_rate=8000, progress=False)
    with pytest.raises(ConfigError, match="durations"):
        make_demo_dataset(tmp_path, n_clips=3, progress=False, duration_range=(3.0, 2.0))
    assert list(tmp_path.iterdir()) == []


def _run_script(conf: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--conf", str(conf), "--set", f"data.dataset_dir={data}",
           "--clips", "9", "--duration-range", "2", "3", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)


def test_script_is_idempotent_and_force_regenerates(tmp_path):
    data = tmp_path / "clotho"
    conf = tmp_path / "conf.yaml"
    conf.write_text(f"data:\n  dataset_dir: {data}\n", encoding="utf-8")

    first = _run_script(conf, data)
    assert first.returncode == 0, first.stderr
    assert "development: 5 clips" in first.stdout
    assert manifest(data)["counts"] == split_sizes(9)
    stamps = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    contents = all_files(data)

    second = _run_script(conf, data)
    assert second.returncode == 0, second.stderr
    assert "already complete" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()} == stamps

    third = _run_script(conf, data, "--force")
    assert third.returncode == 0, third.stderr
    assert "already complete" not in third.stdout
    assert all(p.stat().st_mtime_ns != stamps[p] for p in data.rglob("*.wav"))
    assert all_files(data) == contents

    bad = _run_script(conf, data, "--sample-rate", "8000")
    assert bad.returncode == 2 and bad.stderr.startswith("error: sample rate must be >=")
