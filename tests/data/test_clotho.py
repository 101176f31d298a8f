import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from utils.base.errors import DataError
from utils.base.tables import read_audio_table, read_rows, read_text_table
from utils.data import clotho as stage1
from utils.data.clotho import build_paired_split, build_query_split, make_fid, make_tid

ROOT = Path(__file__).resolve().parents[2]

# (name in the CSV, name on disk)
ODD_NAMES = [
    ("plain.wav", "plain.wav"),
    ("Birds, chirping (morning) #2.wav", "Birds, chirping (morning) #2.wav"),
    ("Tom&#39;s kettle &amp; steam.wav", "Tom's kettle & steam.wav"),
    ("  leading and trailing spaces.wav ", "leading and trailing spaces.wav"),
    ("trailing space on disk.wav", "trailing space on disk .wav"),
    ("double  space &amp;amp; entity.wav", "double space & entity.wav"),
    ("Rain & thunder (far).wav", "Rain &amp; thunder (far).wav"),
]


def make_wav(path, seconds=0.3, sr=16000):
    sf.write(path, np.random.default_rng(0).normal(0, 0.1, int(seconds * sr)).astype(np.float32), sr)


def write_captions(path, names):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
        for n in names:
            w.writerow([n] + [f"A sound, number {i}!" for i in range(1, 6)])


@pytest.fixture
def clotho(tmp_path):
    root = tmp_path / "Clotho"
    (root / "development").mkdir(parents=True)
    for _, disk in ODD_NAMES:
        make_wav(root / "development" / disk)
    (root / "development" / "empty.wav").write_bytes(b"")
    (root / "development" / "garbage.wav").write_bytes(b"not a wav file at all" * 10)
    sf.write(root / "development" / "zero.wav", np.zeros(0, dtype=np.float32), 16000)
    make_wav(root / "development" / "uncaptioned.wav")
    names = [csv_name for csv_name, _ in ODD_NAMES] + ["empty.wav", "garbage.wav", "zero.wav", "missing.wav"]
    write_captions(root / "clotho_captions_development.csv", names)
    return root


@pytest.mark.parametrize("csv_name, disk_name", ODD_NAMES)
def test_name_key_matches_csv_and_disk_spellings(csv_name, disk_name):
    assert stage1.name_key(csv_name) == stage1.name_key(disk_name)


def test_name_key_keeps_distinct_names_apart():
    assert stage1.name_key("a (1).wav") != stage1.name_key("a (2).wav")
    assert stage1.name_key("a#b.wav") != stage1.name_key("ab.wav")


def test_ids_are_deterministic_and_distinct():
    assert make_fid("development", "Tom&#39;s kettle.wav") == make_fid("development", "Tom's kettle.wav ")
    assert make_fid("development", "a.wav") != make_fid("validation", "a.wav")
    assert make_fid("development", "a.wav") == "dev_" + __import__("hashlib").sha1(b"development/a.wav").hexdigest()[:12]
    assert make_tid("dev_x", 3) == "dev_x_3"


def test_normalize_text():
    assert stage1.normalize_text("A dog barks, loudly!  Then   stops.") == "a dog barks loudly then stops"


def test_paired_split_matches_odd_names_and_reports_bad_clips(clotho):
    t = build_paired_split("development", clotho / "clotho_captions_development.csv", clotho / "development", clotho)
    assert len(t.audio_rows) == len(ODD_NAMES)
    assert len(t.text_rows) == 5 * len(ODD_NAMES)
    reasons = {r["fname"]: r["reason"] for r in t.skipped}
    assert reasons["empty.wav"].startswith("empty file")
    assert reasons["garbage.wav"].startswith("unreadable")
    assert reasons["zero.wav"] == "zero-length audio"
    assert reasons["missing.wav"] == "no matching audio file"
    assert "no captions" in reasons["uncaptioned.wav"]
    on_disk = {r["fname"] for r in t.audio_rows}
    assert on_disk == {disk for _, disk in ODD_NAMES}
    assert len({r["tid"] for r in t.text_rows}) == len(t.text_rows)


def test_missing_columns_is_a_clear_error(tmp_path):
    (tmp_path / "development").mkdir()
    (tmp_path / "clotho_captions_development.csv").write_text("file_name,caption_1\na.wav,hello\n")
    with pytest.raises(DataError, match=r"caption_2"):
        build_paired_split("development", tmp_path / "clotho_captions_development.csv", tmp_path / "development",
                           tmp_path)


def test_query_split(tmp_path):
    (tmp_path / "test").mkdir()
    make_wav(tmp_path / "test" / "x (1).wav")
    make_wav(tmp_path / "test" / "y.wav")
    (tmp_path / "retrieval_captions.csv").write_text('caption\n"A dog, barking."\nRain falls\n')
    t = build_query_split("test", tmp_path / "retrieval_captions.csv", tmp_path / "test", tmp_path)
    assert [r["fname"] for r in t.audio_rows] == ["x (1).wav", "y.wav"]
    assert [r["raw_text"] for r in t.text_rows] == ["A dog, barking.", "Rain falls"]
    assert all(r["fid"] == "" for r in t.text_rows)


def run_stage1(clotho, work):
    conf = clotho.parent / "c.yaml"
    conf.write_text(f"data: {{dataset_dir: '{clotho}', work_dir: '{work}', splits: [development]}}\n")
    return subprocess.run([sys.executable, str(ROOT / "preprocessing/01_clotho_dataset.py"), "--conf", str(conf)],
                          capture_output=True, text=True)


def test_stage1_script_is_deterministic(clotho, tmp_path):
    p1 = run_stage1(clotho, tmp_path / "w1")
    p2 = run_stage1(clotho, tmp_path / "w2")
    assert p2.returncode == 0, p2.stderr
    assert p1.returncode == 0, p1.stderr
    for name in ["development_text.csv", "development_audio.csv", "development_skipped.csv"]:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    text = read_text_table(tmp_path / "w1" / "development_text.csv")
    audio = read_audio_table(tmp_path / "w1" / "development_audio.csv")
    assert {r["fid"] for r in text} == {r["fid"] for r in audio}
    assert len(read_rows(tmp_path / "w1" / "development_skipped.csv")) == 5
    assert "development" in p1.stdout and (tmp_path / "w1" / "dataset_stats.json").is_file()


def test_stage1_missing_csv_says_what_to_do(tmp_path):
    (tmp_path / "Clotho").mkdir()
    proc = run_stage1(tmp_path / "Clotho", tmp_path / "w")
    assert proc.returncode == 2
    assert "clotho_captions_development.csv" in proc.stderr and "data.dataset_dir" in proc.stderr
