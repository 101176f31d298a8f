"""Users' own audio–caption data (issue #8 part 2): the ``pairs`` CSV format, ``data.sources``, training on
several splits joined by '+', and metrics with any number of captions per clip."""

from __future__ import annotations

import csv
import importlib.util
import json
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import ROOT, fake_text_model

from utils.base import paths
from utils.base.config import ConfigError, load_config
from utils.base.errors import DataError
from utils.base.tables import read_rows, read_text_table
from utils.criterion_utils import info_nce
from utils.data.caption_vectors import update_text_embeddings
from utils.data.clotho import make_fid
from utils.data.datasets import PairDataset, collate_pairs
from utils.data.pairs import build_pairs_split, build_split
from utils.data.split_mix import load_splits
from utils.evaluation.metrics import xmodal_metrics
from utils.evaluation.scoring import read_scores
from utils.text.fingerprint import weights_fingerprint

# (CSV spelling, name on disk): commas, parentheses, '#', HTML entities, stray spaces
ODD = [
    ("Rain, thunder (far) #2.wav", "Rain, thunder (far) #2.wav"),
    ("Tom&amp;Jerry &#39;chase&#39;.wav", "Tom&Jerry 'chase'.wav"),
    ("  kettle  boils .wav ", "kettle boils.wav"),
    ("birds/robin (dawn).wav", "birds/robin (dawn).wav"),
]


def load_script(folder: str, name: str):
    spec = importlib.util.spec_from_file_location(name.replace(".py", ""), ROOT / folder / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_wav(path: Path, seconds: float = 0.3, sr: int = 16000, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(seed).normal(0, 0.1, int(seconds * sr)).astype(np.float32), sr)


def write_pairs(path: Path, rows: list[tuple[str, str]], header=("file_name", "caption")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def own(tmp_path):
    """An own data set: odd names, one clip with 3 captions (rows not adjacent), a missing file, an empty
    file, a clip whose only caption is blank, and a clip nobody captioned."""
    audio = tmp_path / "mine" / "audio"
    for _, disk in ODD:
        make_wav(audio / disk)
    (audio / "empty.wav").write_bytes(b"")
    make_wav(audio / "blank caption.wav")
    make_wav(audio / "uncaptioned.wav")
    rows = [(ODD[0][0], "Rain falls, thunder rumbles far away."),
            (ODD[1][0], "A cartoon chase with crashes."),
            (ODD[0][0], "Heavy rain and distant thunder."),
            (ODD[2][0], "A kettle boils and whistles."),
            ("missing.wav", "Nobody recorded this."),
            ("missing.wav", "Still nobody."),
            (ODD[3][0], "A robin sings at dawn."),
            ("empty.wav", "An empty file."),
            ("blank caption.wav", "   "),
            (ODD[0][0].upper(), "Upper-case spelling of the same file."),  # an unambiguous loose match
            ("./ Rain, thunder (far) #2.wav", "Storm outside a window.")]
    write_pairs(tmp_path / "mine" / "captions.csv", rows)
    return tmp_path / "mine"


def test_pairs_split_odd_names_caption_counts_and_skips(own):
    tables = build_pairs_split("mine", own / "captions.csv", own / "audio", own)
    by_name = {r["fname"]: r for r in tables.audio_rows}
    assert sorted(by_name) == sorted(disk for _, disk in ODD)
    assert all(r["fid"] == make_fid("mine", r["fname"]) for r in tables.audio_rows)
    assert by_name["birds/robin (dawn).wav"]["path"] == "audio/birds/robin (dawn).wav"
    rain = by_name["Rain, thunder (far) #2.wav"]["fid"]
    rain_captions = [(r["tid"], r["raw_text"]) for r in tables.text_rows if r["fid"] == rain]
    # CSV order per clip
    assert rain_captions == [(f"{rain}_1", "Rain falls, thunder rumbles far away."),
                             (f"{rain}_2", "Heavy rain and distant thunder."),
                             (f"{rain}_3", "Upper-case spelling of the same file."),
                             (f"{rain}_4", "Storm outside a window.")]
    counts = {fid: sum(r["fid"] == fid for r in tables.text_rows) for fid in (r["fid"] for r in tables.audio_rows)}
    assert sorted(counts.values()) == [1, 1, 1, 4]
    assert len({r["tid"] for r in tables.text_rows}) == len(tables.text_rows) == 7
    skipped = {r["fname"]: r["reason"] for r in tables.skipped}
    assert skipped == {"missing.wav": "no matching audio file (2 caption rows)",
                       "empty.wav": "empty file (0 bytes)",
                       "blank caption.wav": "only empty captions in the CSV",
                       "uncaptioned.wav": "audio file has no captions in the CSV"}


def test_wide_caption_columns_and_bad_files(tmp_path):
    make_wav(tmp_path / "audio" / "a.wav")
    write_pairs(tmp_path / "wide.csv", [("a.wav", "one", "", "three")], ("file_name", "caption_1", "caption_2",
                                                                         "caption_3"))
    tables = build_pairs_split("w", tmp_path / "wide.csv", tmp_path / "audio", tmp_path)
    assert [(r["tid"][-2:], r["raw_text"]) for r in tables.text_rows] == [("_1", "one"), ("_2", "three")]
    write_pairs(tmp_path / "bad.csv", [("a.wav", "x")], ("name", "text"))
    with pytest.raises(DataError, match=r"bad\.csv.*file_name and caption"):
        build_pairs_split("w", tmp_path / "bad.csv", tmp_path / "audio", tmp_path)
    with pytest.raises(DataError, match="data.sources.w.audio_dir"):
        build_pairs_split("w", tmp_path / "wide.csv", tmp_path / "nowhere", tmp_path)


def test_ids_are_stable_when_rows_are_added(own):
    first = build_pairs_split("mine", own / "captions.csv", own / "audio", own)
    with open(own / "captions.csv", "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("uncaptioned.wav", "Now it has a caption."), (ODD[1][0], "A second caption.")])
    second = build_pairs_split("mine", own / "captions.csv", own / "audio", own)
    old = {r["tid"]: r["raw_text"] for r in first.text_rows}
    new = {r["tid"]: r["raw_text"] for r in second.text_rows}
    assert {t: new[t] for t in old} == old  # every old caption keeps its ID
    assert len(new) == len(old) + 2 and make_fid("mine", "uncaptioned.wav") in {r["fid"] for r in second.audio_rows}


def test_clotho_format_source_outside_dataset_dir(tmp_path):
    make_clotho_split(tmp_path / "elsewhere", "extra", 2)
    (tmp_path / "elsewhere" / "extra" / "stray.wav").write_bytes(b"")
    conf = load_config(ROOT / "conf.yaml", [f"data.dataset_dir={tmp_path / 'Clotho'}", "data.splits=[]",
                                            "data.sources={extra: {format: clotho, captions_csv: "
                                            f"{tmp_path}/elsewhere/clotho_captions_extra.csv, audio_dir: "
                                            f"{tmp_path}/elsewhere/extra}}}}"])
    tables = build_split(conf, "extra")
    assert [r["path"] for r in tables.audio_rows] == [str(tmp_path / "elsewhere" / "extra" / f"clip {i}, take ({i})"
                                                          ".wav") for i in range(2)]
    assert len(tables.text_rows) == 10 and tables.text_rows[0]["tid"] == make_fid("extra", "clip 0, take (0).wav") + "_1"
    assert tables.skipped == [{"fname": "stray.wav", "path": str(tmp_path / "elsewhere" / "extra" / "stray.wav"),
                               "reason": "audio file has no captions in the CSV"}]


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def test_plain_conf_is_unchanged_and_sources_join_the_splits(tmp_path):
    plain = load_config(ROOT / "conf.yaml")
    assert plain.data.sources == {} and plain.data.train_split == "development"
    assert plain.data.all_splits() == ["development", "validation", "evaluation"]
    conf = load_config(ROOT / "conf.yaml", ["data.sources={mine: {captions_csv: /d/c.csv, audio_dir: ~/a}}",
                                            "data.train_split=development+mine"])
    assert conf.data.all_splits() == ["development", "validation", "evaluation", "mine"]
    assert paths.split_format(conf, "mine") == "pairs" and paths.split_format(conf, "development") == "clotho"
    assert paths.captions_csv(conf, "mine") == Path("/d/c.csv")
    assert paths.audio_dir(conf, "mine") == Path("~/a").expanduser()
    assert paths.captions_csv(conf, "development") == Path("data/Clotho/clotho_captions_development.csv")
    for bad, message in [("data.sources={mine: {captions_csv: c.csv}}", "needs captions_csv"),
                         ("data.sources={mine: {format: wav}}", "one of"),
                         ("data.train_split=development + development", "each once"),
                         ("data.val_split=validation+", "each once"),
                         ("data.splits=[a+b]", "contain '\\+'")]:
        with pytest.raises(ConfigError, match=message):
            load_config(ROOT / "conf.yaml", [bad])


# --------------------------------------------------------------------------------------------
# Metrics with 1 and 3 captions per clip
# --------------------------------------------------------------------------------------------


def test_a2t_recall_divides_by_each_clips_caption_count():
    # clip 0 has captions 0, 1, 2; clip 1 has caption 3 (one caption)
    text_to_audio = np.array([0, 0, 0, 1])
    scores = np.array([[0.9, 0.1],   # caption 0
                       [0.2, 0.8],   # caption 1
                       [0.7, 0.3],   # caption 2
                       [0.4, 0.6]])  # caption 3
    m = xmodal_metrics(scores, text_to_audio, ks=(1, 2, 3), map_k=3)
    # a2t clip 0 ranks captions by column 0: c0 .9, c2 .7, c3 .4, c1 .2 -> relevant at ranks 1, 2, 4
    #   R@1 = 1/3, R@2 = 2/3, R@3 = 2/3, AP@3 = (1/1 + 2/2) / 3 = 2/3
    # a2t clip 1 ranks by column 1: c1 .8, c3 .6, c2 .3, c0 .1 -> its one caption at rank 2
    #   R@1 = 0, R@2 = R@3 = 1, AP@3 = (1/2) / 1
    assert m["a2t"] == pytest.approx({"mAP@3": (2 / 3 + 1 / 2) / 2, "R@1": (1 / 3 + 0) / 2,
                                      "R@2": (2 / 3 + 1) / 2, "R@3": (2 / 3 + 1) / 2})
    # t2a: c0 -> clip 0 rank 1; c1 -> clip 0 rank 2; c2 -> rank 1; c3 -> clip 1 rank 1
    assert m["t2a"] == pytest.approx({"mAP@3": (1 + 1 / 2 + 1 + 1) / 4, "R@1": 3 / 4, "R@2": 1.0, "R@3": 1.0})


# --------------------------------------------------------------------------------------------
# Stages 1-3, training on Clotho development + an own pairs split, postprocessing on the pairs split
# --------------------------------------------------------------------------------------------


def fake_vectors(texts: list[str], dim: int = 32) -> np.ndarray:
    """Deterministic stand-in for Sentence-BERT: a vector per caption text."""
    return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=dim) for t in texts]).astype(
        np.float32)


def make_clotho_split(root: Path, split: str, n: int) -> None:
    names = [f"clip {i}, take ({i % 2}).wav" for i in range(n)]
    for i, name in enumerate(names):
        make_wav(root / split / name, seconds=1.6, seed=i)
    with open(root / f"clotho_captions_{split}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file_name"] + [f"caption_{k}" for k in range(1, 6)])
        w.writerows([name] + [f"Sound {i}, caption {k}." for k in range(1, 6)] for i, name in enumerate(names))


def make_own_split(root: Path, n: int) -> list[int]:
    """``n`` clips with 1, 2 or 3 captions each, outside the Clotho folder; returns the caption counts."""
    counts = [1 + i % 3 for i in range(n)]
    rows = []
    for i, count in enumerate(counts):
        name = f"own #{i} (take &amp; {i}).wav"
        make_wav(root / "audio" / name.replace("&amp;", "&"), seconds=1.6, seed=100 + i)
        rows += [(name, f"Own sound {i}, description {k}.") for k in range(count)]
    rows.append(("gone.wav", "A file that is not there."))
    write_pairs(root / "pairs.csv", rows)
    return counts


@pytest.fixture
def mixed(tmp_path):
    clotho, own_dir = tmp_path / "Clotho", tmp_path / "own"
    make_clotho_split(clotho, "development", 6)
    counts = make_own_split(own_dir, 7)
    run_dir = tmp_path / "runs" / "mix"
    conf = {
        "data": {"dataset_dir": str(clotho), "splits": ["development"],
                 "sources": {"mine": {"format": "pairs", "captions_csv": str(own_dir / "pairs.csv"),
                                      "audio_dir": str(own_dir / "audio")}},
                 "train_split": "development+mine", "val_split": "mine", "eval_splits": ["mine"],
                 "allow_overlap": True},  # trains on the split it evaluates: a plumbing test, not a result
        "features": {"workers": 1},
        "text": {"model": fake_text_model(tmp_path)[0]},  # stands for the model that made run_stages_1_to_3's vectors
        "model": {"audio_enc": {"width": 0.125, "init": "random", "out_dim": 16}, "text_enc": {"out_dim": 16}},
        "train": {"epochs": 1, "batch_size": 8, "num_workers": 0, "eval_batch_size": 8, "log_every": 1,
                  "device": "cpu", "early_stop": {"enabled": False}},
        "run": {"dir": str(run_dir.parent), "name": run_dir.name},
    }
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path, clotho, run_dir, counts


def run_stages_1_to_3(conf_path: Path) -> None:
    for folder, script, extra in [("preprocessing", "01_clotho_dataset.py", []),
                                  ("preprocessing", "02_audio_logmel.py", ["--no-progress"])]:
        module = load_script(folder, script)
        module.run(module.main, module.parser, ["--conf", str(conf_path), *extra])
    conf = load_config(conf_path)  # stage 3 with a stand-in encoder, over the same splits as the script
    tables = {split: read_text_table(paths.text_table(conf, split)) for split in conf.data.all_splits()}
    update_text_embeddings(paths.text_embeds(conf), tables, conf.text.model, fake_vectors,
                           weights_fingerprint(conf.text.model))


def test_stage1_tables_for_a_clotho_and_a_pairs_split(mixed):
    conf_path, clotho, _, counts = mixed
    module = load_script("preprocessing", "01_clotho_dataset.py")
    module.run(module.main, module.parser, ["--conf", str(conf_path)])
    first = (clotho / "mine_text.csv").read_text(encoding="utf-8")
    module.run(module.main, module.parser, ["--conf", str(conf_path)])
    assert (clotho / "mine_text.csv").read_text(encoding="utf-8") == first  # same IDs on a rerun
    text = read_text_table(clotho / "mine_text.csv")
    audio = read_rows(clotho / "mine_audio.csv")
    assert [sum(r["fid"] == a["fid"] for r in text) for a in audio] == counts
    assert audio[0]["fname"] == "own #0 (take & 0).wav" and Path(audio[0]["path"]).is_absolute()
    assert [r["reason"] for r in read_rows(clotho / "mine_skipped.csv")] == ["no matching audio file (1 caption row)"]
    assert len(read_text_table(clotho / "development_text.csv")) == 30
    stats = json.loads((clotho / "dataset_stats.json").read_text())
    assert stats["mine"]["clips"] == 7 and stats["mine"]["captions"] == sum(counts)


def test_mixed_training_batches_keep_same_clip_captions_apart(mixed):
    conf_path, clotho, _, counts = mixed
    run_stages_1_to_3(conf_path)
    mels = clotho / "mine_audio_logmels.hdf5"
    with h5py.File(mels, "r") as h5:
        assert set(h5) == {r["fid"] for r in read_rows(clotho / "mine_audio.csv")}
    before = mels.stat().st_mtime_ns
    stage2 = load_script("preprocessing", "02_audio_logmel.py")  # a rerun finds every clip done (resumable)
    stage2.run(stage2.main, stage2.parser, ["--conf", str(conf_path), "--no-progress"])
    assert mels.stat().st_mtime_ns == before
    conf = load_config(conf_path)
    data = load_splits(conf, conf.data.train_split)
    assert data.split == "development+mine" and len(data.fids) == 6 + 7
    assert len(data.text_rows) == 30 + sum(counts) == len(data.text_embeds)
    for i, row in enumerate(data.text_rows):  # every caption points at its own clip, in both splits
        assert data.fids[data.text_to_audio[i]] == row["fid"]
        assert data.features.n_frames(row["fid"]) == data.features[row["fid"]].shape[0]
    dataset = PairDataset(data)
    mine = [i for i, r in enumerate(data.text_rows) if r["fid"].startswith("min_")]
    three = [i for i in mine if sum(data.text_to_audio == data.text_to_audio[i]) == 3]
    batch = collate_pairs([dataset[i] for i in three[:3] + [0, 5, mine[0]]])  # one 3-caption clip + others
    assert batch.clip[:3].unique().numel() == 1 and batch.clip.unique().numel() == 4
    audio, text = torch.randn(6, 4), torch.randn(6, 4)
    loss = info_nce(audio, text, batch.clip, 0.1)
    # the same loss with other captions of the same clip removed by hand from each anchor's candidates
    logits = audio @ text.t() / 0.1
    expected = 0.0
    for i in range(6):
        keep = [j for j in range(6) if j == i or batch.clip[j] != batch.clip[i]]
        expected += torch.logsumexp(logits[i, keep], 0) - logits[i, i]
        expected += torch.logsumexp(logits[keep, i], 0) - logits[i, i]
    assert float(loss) == pytest.approx(float(expected) / 6, rel=1e-5)


def test_train_on_clotho_plus_pairs_then_evaluate_the_pairs_split(mixed, capsys):
    conf_path, clotho, run_dir, counts = mixed
    run_stages_1_to_3(conf_path)
    main = load_script(".", "main.py")
    main.run(main.main, main.parser, ["--conf", str(conf_path)])
    assert f"{30 + sum(counts)} pairs / 13 clips" in capsys.readouterr().out
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record["val_a2t"]) == {"mAP@10", "R@1", "R@5", "R@10"}

    scores_script = load_script("postprocessing", "01_xmodal_scores.py")
    scores_script.run(scores_script.main, scores_script.parser, ["--conf", str(conf_path), "--run", str(run_dir)])
    retrieval = load_script("postprocessing", "02_xmodal_retrieval.py")
    retrieval.run(retrieval.main, retrieval.parser, ["--conf", str(conf_path), "--run", str(run_dir)])
    metrics = json.loads((run_dir / "eval" / "mine_metrics.json").read_text())
    scores = read_scores(run_dir / "eval" / "mine_xmodal_scores.hdf5")
    text = read_text_table(clotho / "mine_text.csv")
    assert scores.text_ids == [r["tid"] for r in text] and scores.scores.shape == (sum(counts), 7)
    clip_of = np.array([scores.audio_ids.index(r["fid"]) for r in text])  # (n_captions,)
    for k in (1, 5, 10):  # a2t R@k by hand: per clip, the share of its own captions in its top k
        hand = [np.isin(np.argsort(-scores.scores[:, c], kind="stable")[:k], np.nonzero(clip_of == c)[0]).sum()
                / (clip_of == c).sum() for c in range(7)]
        assert metrics["a2t"][f"R@{k}"] == pytest.approx(np.mean(hand))
    assert sorted(np.bincount(clip_of).tolist()) == sorted(counts)
