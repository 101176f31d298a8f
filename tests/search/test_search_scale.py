"""The index of large libraries: shards that survive kill -9, parallel decoding, torchrun ranks, approximate search."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import test_search
from test_search import count_features, tone

from utils.search.index import FolderIndex
from utils.search.retriever import Retriever
from utils.search.store import Store

ROOT = Path(__file__).resolve().parents[2]
setup = test_search.setup  # test_search's run dir and five clips (a fixture)
N_CLIPS = 24
SHARD = 4  # files per shard in these tests


def write_library(folder: Path, n: int = N_CLIPS) -> list[str]:
    """``n`` clips of distinct pitch and length (so no two share a vector), two in subfolders."""
    rels = []
    for i in range(n):
        rel = f"{'deep/' if i % 7 == 3 else ''}clip{i:02d}.wav"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(folder / rel, tone(120 + 90 * i, 16000, seconds=0.6 + 0.05 * (i % 5), noise=0.02, seed=i), 16000)
        rels.append(rel)
    return sorted(rels)


@pytest.fixture
def library(setup, tmp_path):
    """test_search's run, and a library of N_CLIPS clips: (run dir, folder, sorted relative paths)."""
    return setup[0], tmp_path / "lib", write_library(tmp_path / "lib")


def direct_embeddings(run_dir: Path, folder: Path, rels: list[str]) -> dict[str, np.ndarray]:
    """Each clip embedded alone through Retriever.embed_audio: the reference the index must hold."""
    r = Retriever.from_run(run_dir, device="cpu")
    return {rel: r.embed_audio([folder / rel])[0] for rel in rels}


def stored(index) -> dict[str, np.ndarray]:
    return {p: np.asarray(index.embeddings[i]) for i, p in enumerate(index.paths)}


def manifest_entries(root: Path) -> dict[str, list[str]]:
    """Files committed per segment, read from the manifests as JSON (not through the store's code)."""
    out: dict[str, list[str]] = {}
    for path in sorted((root / "shards").glob("*.json")):
        m = json.loads(path.read_text())
        out.setdefault(m["segment"], []).extend(e[0] for e in m["entries"])
    return out


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
import utils.search.embedder as embedder
from utils.search.index import FolderIndex
from utils.search.retriever import Retriever

run_dir, folder, index_dir, kill_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
done = [0]
original = embedder.Embedder.embed_features

def embed_then_die(self, mels, progress=False):
    if done[0] + len(mels) > kill_after:  # kill -9 in the middle of the batch that passes the mark
        os.kill(os.getpid(), signal.SIGKILL)
    done[0] += len(mels)
    print(done[0], flush=True)
    return original(self, mels, progress)

embedder.Embedder.embed_features = embed_then_die
r = Retriever.from_run(run_dir, device="cpu")
r.indexing.workers, r.indexing.flush_files, r.indexing.location = 2, {shard}, Path(index_dir)
r.index_folder(folder, progress=False)
""".replace("{shard}", str(SHARD))


def test_kill_9_mid_index_then_resume_re_embeds_at_most_one_shard(library, tmp_path, monkeypatch):
    run_dir, folder, rels = library
    index_dir = tmp_path / "index"
    half = N_CLIPS // 2 + 1  # not a shard boundary
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(run_dir), str(folder), str(index_dir), str(half)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    embedded_before_kill = int(proc.stdout.split()[-1])
    committed = [p for files in manifest_entries(index_dir).values() for p in files]
    assert 0 < len(committed) <= embedded_before_kill
    assert embedded_before_kill - len(committed) <= SHARD  # at most one shard's work was lost

    seen = count_features(monkeypatch)
    r = Retriever.from_run(run_dir, device="cpu")
    r.indexing.flush_files, r.indexing.location = SHARD, index_dir
    update = r.index_folder(folder, progress=False)
    assert update.reused == len(committed) and not update.rebuilt
    assert sorted(seen) == sorted(Path(p).name for p in rels if p not in committed)  # only the rest re-embedded
    assert len(update.added) == N_CLIPS - len(committed)
    assert "reused" in update.closing_line(len(r.index)) and str(index_dir) in update.closing_line(len(r.index))
    got, want = stored(r.index), direct_embeddings(run_dir, folder, rels)
    assert sorted(got) == rels
    for rel in rels:
        np.testing.assert_allclose(got[rel], want[rel], atol=1e-5, err_msg=rel)


def test_refresh_writes_only_what_changed_and_reopens_memory_mapped(library, tmp_path):
    run_dir, folder, rels = library
    r = Retriever.from_run(run_dir, device="cpu")
    r.indexing.flush_files, r.indexing.location, r.indexing.workers = SHARD, tmp_path / "index", 2
    r.index_folder(folder, progress=False)
    segments = {p.name: p.stat().st_size for p in (tmp_path / "index" / "shards").glob("*.f32")}
    (folder / rels[0]).unlink()
    sf.write(folder / "new.wav", tone(5000, 16000, seconds=0.7), 16000)
    update = r.index_folder(folder, progress=False)
    assert update.added == ["new.wav"] and update.removed == [rels[0]] and update.reused == N_CLIPS - 1
    after = {p.name: p.stat().st_size for p in (tmp_path / "index" / "shards").glob("*.f32")}
    assert {k: after[k] for k in segments} == segments  # old shards untouched: one new segment of one row
    new_segments = set(after) - set(segments)
    assert len(new_segments) == 1 and after[new_segments.pop()] == 16 * 4  # one row of 16 float32
    reopened = Retriever.from_run(run_dir, device="cpu")
    reopened.indexing.location = tmp_path / "index"
    reopened.index_folder(folder, progress=False)
    assert isinstance(reopened.index.embeddings.blocks[0][0], np.memmap)
    want = direct_embeddings(run_dir, folder, [*rels[1:], "new.wav"])
    got = stored(reopened.index)
    assert sorted(got) == sorted(want)
    for rel, vec in want.items():
        np.testing.assert_allclose(got[rel], vec, atol=1e-5, err_msg=rel)


def test_old_npz_index_is_named_and_rebuilt(library, capsys):
    run_dir, folder, _ = library
    r = Retriever.from_run(run_dir, device="cpu")
    old = r.index_path(folder).with_name(r.index_path(folder).name + ".npz")
    old.parent.mkdir(parents=True)
    old.write_bytes(b"PK old index")
    r.index_folder(folder, progress=False)
    err = capsys.readouterr().err
    assert "older version" in err and str(old) in err and "delete the .npz" in err
    assert len(r.index) == N_CLIPS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_write_one_index_equal_to_one_process(library, tmp_path):
    run_dir, folder, rels = library
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(ROOT / "search.py"), "--run-dir", str(run_dir), "--audio", str(folder), "--index", str(two),
           "--workers", "1", "--shard-files", str(SHARD), "--device", "cpu", "--json", "--like", str(folder / rels[5])]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env=os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)[0]["results"][0]["path"] == str((folder / rels[5]).resolve())  # rank 0 prints once
    per_rank = manifest_entries(two)
    assert sorted(s[-4:] for s in per_rank) == ["r000", "r001"]
    files_a, files_b = per_rank.values()
    assert not set(files_a) & set(files_b) and sorted(files_a + files_b) == rels  # a split, no file twice
    assert abs(len(files_a) - len(files_b)) <= 1

    one = Retriever.from_run(run_dir, device="cpu")
    one.indexing.location = tmp_path / "one"
    one.index_folder(folder, progress=False)
    joined, single = stored(FolderIndex.open(Store(two))), stored(one.index)
    assert sorted(joined) == sorted(single) == rels
    for rel in rels:
        np.testing.assert_allclose(joined[rel], single[rel], atol=1e-6, err_msg=rel)


def clustered(n: int, dim: int, seed: int, centers: int = 200, spread: float = 0.5) -> np.ndarray:
    """Unit vectors around ``centers`` random directions: an embedding-like set with structure to find."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_approximate_index_meets_its_recall_against_exact_search(tmp_path, monkeypatch, capsys):
    faiss = pytest.importorskip("faiss")
    import utils.search.index as index_code

    n = 20_000
    emb, queries = np.split(clustered(n + 300, 32, seed=0), [n])  # queries: fresh points of the same distribution
    index = FolderIndex(tmp_path, "key", [f"f{i}.wav" for i in range(n)], np.zeros(n, np.int64),
                        np.zeros(n, np.int64), emb)
    monkeypatch.setattr(index_code, "ANN_MIN_FILES", 1000)
    ann = index.faiss_index()
    assert isinstance(ann, faiss.IndexIVFFlat) and 1 < ann.nprobe < ann.nlist
    printed = capsys.readouterr().err
    assert "recall@10" in printed and float(printed.split("recall@10 ")[1].split()[0]) >= 0.95
    exact = np.argsort(-(queries @ emb.T), axis=1, kind="stable")[:, :10]  # numpy, not the index's code
    _, approx = ann.search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.9
    small = FolderIndex(tmp_path, "key", ["a.wav"] * 10, np.zeros(10, np.int64), np.zeros(10, np.int64), emb[:10])
    monkeypatch.setattr(index_code, "ANN_MIN_FILES", 100)
    assert isinstance(small.faiss_index(), faiss.IndexFlatIP)  # small indexes stay exact
