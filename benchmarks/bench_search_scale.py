"""Search at library scale: indexing throughput (old single-.npz code vs the sharded one), resume after kill -9,
and exact / approximate search, load time and peak RSS at 100k and 1M synthetic embeddings.

    python benchmarks/bench_search_scale.py                        # everything (about 15 min on 2 cores)
    python benchmarks/bench_search_scale.py --parts search --sizes 100000
    python benchmarks/bench_search_scale.py --parts index resume --files 5000

Indexing: ``--files`` wavs of 5-30 s (16 kHz, tones + noise, 100 per folder), the demo's model (conf_demo.yaml,
CNN14 width 0.125, random weights: speed does not depend on training). The old code is commit ``OLD_COMMIT``
(``git archive``), run as ``search.py --like`` in a fresh process, exactly like the new one; wall time, CPU time
(user + system of the process and its workers, from ``wait4``) and peak RSS of each.
Resume: the new code is killed (SIGKILL to its process group) once half the files are committed, then rerun;
"re-embedded" is the files its progress bar had counted at the kill minus the files the rerun reused.
Search: clustered unit vectors (300-d) written with :meth:`FolderIndex.save`, then opened in a fresh process:
open time, peak RSS, exact p50/p95 of one query (one BLAS thread, as ``Retriever.search`` runs few queries), the
IVF build with its recall@10, approximate p50/p95 and recall@10 on fresh queries.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml
from machine import (  # benchmarks/machine.py (this folder is on sys.path when run as a script)
    cpu_name,
    save_result,
)

from models.core import build_model
from utils.base.config import load_config, to_dict
from utils.base.devices import one_thread
from utils.evaluation.metrics import top_k
from utils.search.ann import recall_at
from utils.search.index import FolderIndex
from utils.search.store import Store

ROOT = Path(__file__).resolve().parent.parent
OLD_COMMIT = "7e700d1"  # the last commit with the single-.npz index and serial decoding


def clustered(n: int, dim: int, seed: int, stream: int = 0, centers: int = 4096, spread: float = 1.0) -> np.ndarray:
    """``(n, dim)`` float32 unit vectors around random centres (the same for every ``stream`` of one ``seed``):
    embedding-like structure for IVF to find; the noise is as large as the centres (recall is not trivial)."""
    c = np.random.default_rng(seed).standard_normal((centers, dim), dtype=np.float32)
    rng = np.random.default_rng([seed, stream])
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, 1 << 16):
        b = min(a + (1 << 16), n)
        x = c[rng.integers(0, centers, b - a)] + spread * rng.standard_normal((b - a, dim), dtype=np.float32)
        out[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss_mib(field: str = "VmHWM") -> int:
    """Peak (``VmHWM``) or current (``VmRSS``) resident memory of this process in MiB: from /proc, because
    ``ru_maxrss`` survives ``exec`` and would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return -1


def pct(times: list[float]) -> dict:
    return {"p50_ms": round(1000 * float(np.percentile(times, 50)), 2),
            "p95_ms": round(1000 * float(np.percentile(times, 95)), 2)}


# ---- search at 100k / 1M --------------------------------------------------------------------


def write_store(n: int, dim: int, where: Path) -> dict:
    emb = clustered(n, dim, seed=0)
    paths = [f"d{i // 1000:04d}/clip_{i:07d}.wav" for i in range(n)]
    index = FolderIndex(where / "sounds", "synthetic", paths, np.zeros(n, np.int64), np.zeros(n, np.int64), emb,
                        durations=np.random.default_rng(1).uniform(1, 30, n).astype(np.float32))
    start = time.perf_counter()
    index.save(where / "index")
    return {"write_s": round(time.perf_counter() - start, 2)}


def search_child(store_dir: str, n_queries: int) -> None:
    """In a fresh process: open, exact and approximate search; prints one JSON line."""
    before = rss_mib()  # Python, numpy, torch imported
    start = time.perf_counter()
    index = FolderIndex.open(Store(Path(store_dir)))
    out = {"open_s": round(time.perf_counter() - start, 3), "files": len(index), "rss_before_open_mib": before,
           "rss_after_open_mib": rss_mib()}
    queries = clustered(n_queries, index.embeddings.shape[1], seed=0, stream=1)  # fresh points, same centres
    exact, times = [], []
    with one_thread():
        for q in queries:
            t = time.perf_counter()
            exact.append(top_k(index.scores(q[None]), 10)[0])
            times.append(time.perf_counter() - t)
    out["exact"] = pct(times[1:])  # the first query pages the matrix in
    times = []
    for q in queries:  # as Retriever.search runs outside the indexer: BLAS on every core
        t = time.perf_counter()
        top_k(index.scores(q[None]), 10)
        times.append(time.perf_counter() - t)
    out["exact_all_threads"] = pct(times)
    out["rss_after_exact_mib"] = rss_mib()  # the pages of the matrix that were read count here
    start = time.perf_counter()
    ann = index.faiss_index()
    out["ivf_build_s"] = round(time.perf_counter() - start, 1)
    out["ivf"] = {"nlist": int(getattr(ann, "nlist", 0)), "nprobe": int(getattr(ann, "nprobe", 0))}  # 0: exact
    approx, times = [], []
    with one_thread():
        for q in queries:
            t = time.perf_counter()
            approx.append(ann.search(q[None], 10)[1][0])
            times.append(time.perf_counter() - t)
    out["approx"] = pct(times) | {"recall@10": round(recall_at(np.array(approx), np.array(exact)), 4)}
    out["rss_peak_mib"] = rss_mib()
    print(json.dumps(out))


def bench_search(sizes: list[int], dim: int, n_queries: int, tmp: Path) -> list[dict]:
    rows = []
    for n in sizes:
        where = tmp / f"search{n}"
        row = {"n": n} | write_store(n, dim, where)
        proc = subprocess.run([sys.executable, __file__, "--child", str(where / "index"), "--queries",
                               str(n_queries)], capture_output=True, text=True, cwd=ROOT, check=True)
        row |= json.loads(proc.stdout.strip().splitlines()[-1])
        row["ivf_printed"] = (proc.stderr.strip().splitlines() or [""])[-1]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ---- indexing throughput and resume ----------------------------------------------------------


def make_library(folder: Path, n: int, seed: int = 0) -> float:
    """``n`` wavs of 5-30 s at 16 kHz; returns the total seconds of audio."""
    rng = np.random.default_rng(seed)
    sr, total = 16000, 0.0
    for i in range(n):
        seconds = float(rng.uniform(5, 30))
        t = np.arange(int(sr * seconds)) / sr
        y = 0.3 * np.sin(2 * np.pi * rng.uniform(80, 4000) * t) + 0.05 * rng.standard_normal(t.size)
        sub = folder / f"part{i // 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        sf.write(sub / f"clip_{i:05d}.wav", y.astype(np.float32), sr, subtype="PCM_16")
        total += seconds
    return total


def make_run(run_dir: Path, width: float) -> Path:
    conf = load_config(ROOT / "conf_demo.yaml")
    conf.model.audio_enc.width = width
    conf.run.dir, conf.run.name = str(run_dir.parent), run_dir.name
    torch.manual_seed(0)
    model = build_model(conf, 384, load_prior=False)
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"model": model.state_dict(), "config": to_dict(conf), "text_dim": 384, "epoch": 0},
               run_dir / "checkpoints" / "best.pt")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(conf), sort_keys=False), encoding="utf-8")
    return run_dir


def old_tree(tmp: Path) -> Path:
    tree = tmp / "old_code"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD_COMMIT, "search.py", "utils", "models"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def run_search(tree: Path, run_dir: Path, folder: Path, extra: list[str], kill_when=None) -> dict:
    """``search.py --like`` in a fresh process group: wall, CPU (wait4) and peak RSS; ``kill_when()`` polled."""
    like = next(folder.rglob("*.wav"))
    cmd = [sys.executable, str(tree / "search.py"), "--run", str(run_dir), "--audio", str(folder), "--like",
           str(like), "-k", "3", *extra]
    env = os.environ | {"PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    err = tempfile.TemporaryFile()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    killed = False
    while proc.poll() is None and kill_when is not None:
        if kill_when():
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err.seek(0)
    text = err.read().decode("utf-8", "replace")
    if not killed and os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed:\n{text[-3000:]}")
    return {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mib": usage.ru_maxrss // 1024, "stderr_tail": text.replace("\r", "\n").strip()[-400:],
            "killed": killed}


def committed(index_dir: Path) -> int:
    return sum(len(json.loads(p.read_text())["entries"]) for p in index_dir.glob("shards/*.json")
               if not p.name.startswith("."))


def bench_index(n: int, width: float, tmp: Path, resume: bool, shard: int, compare: bool = True) -> dict:
    folder = tmp / f"lib{n}"
    if not folder.exists():
        t = time.perf_counter()
        audio_s = make_library(folder, n)
        print(f"made {n} files ({audio_s / 3600:.1f} h of audio) in {time.perf_counter() - t:.0f} s", flush=True)
    out = {"files": n, "width": width}
    if compare:
        out |= compare_index(n, width, tmp, folder)
    if resume:
        out["resume"] = bench_resume(n, width, tmp, folder, shard)
    return out


def compare_index(n: int, width: float, tmp: Path, folder: Path) -> dict:
    """The old code and the new one on the same folder, one after the other."""
    old = run_search(old_tree(tmp) if not (tmp / "old_code").exists() else tmp / "old_code",
                     make_run(tmp / f"old_w{width}" / "run", width), folder, [])
    print("old", json.dumps(old), flush=True)
    new = run_search(ROOT, make_run(tmp / f"new_w{width}" / "run", width), folder,
                     ["--index", str(tmp / f"new_w{width}" / "index")])
    print("new", json.dumps(new), flush=True)
    return {"old": old, "new": new, "speedup": round(old["wall_s"] / new["wall_s"], 2),
            "old_files_per_s": round(n / old["wall_s"], 1), "new_files_per_s": round(n / new["wall_s"], 1)}


def bench_resume(n: int, width: float, tmp: Path, folder: Path, shard: int) -> dict:
    """The new code killed with SIGKILL once half the files are committed, then run again."""
    index_dir = tmp / f"resume_w{width}" / "index"
    run_dir = make_run(tmp / f"resume_w{width}" / "run", width)
    extra = ["--index", str(index_dir), "--shard-files", str(shard)]
    first = run_search(ROOT, run_dir, folder, extra, kill_when=lambda: committed(index_dir) >= n // 2)
    at_kill = committed(index_dir)
    bar = [int(part.split("/")[0].split()[-1]) for part in first["stderr_tail"].split("\n")
           if "index audio:" in part and "/" in part]
    again = run_search(ROOT, run_dir, folder, extra)
    reused = int(again["stderr_tail"].split(" reused")[0].split()[-1])
    out = {"committed_at_kill": at_kill, "bar_at_kill": bar[-1] if bar else None, "reused": reused,
           "re_embedded": (bar[-1] - reused) if bar else None, "shard_files": shard,
           "killed_run": first, "rerun": again}
    print("resume", json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["search", "index", "resume"],
                        choices=["search", "index", "resume"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=300)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--width1-files", type=int, default=0, help="also compare at CNN14 width 1.0 on this many files")
    parser.add_argument("--shard-files", type=int, default=256)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        search_child(args.child, args.queries)
        return
    report = {"machine": cpu_name(), "cores": len(os.sched_getaffinity(0)), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-search-scale-") as tmp_name:
        tmp = Path(tmp_name)
        if "search" in args.parts:
            report["search"] = bench_search(args.sizes, args.dim, args.queries, tmp)
        if "index" in args.parts or "resume" in args.parts:
            report["index"] = [bench_index(args.files, 0.125, tmp, "resume" in args.parts, args.shard_files,
                                           compare="index" in args.parts)]
            if args.width1_files:
                report["index"].append(bench_index(args.width1_files, 1.0, tmp, False, args.shard_files))
    report["load_after"] = os.getloadavg()
    save_result("search_scale", report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
