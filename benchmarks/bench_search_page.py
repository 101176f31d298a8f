"""The listening page, measured from a real browser: query -> rendered results on a large index, and start-up.

    python benchmarks/bench_search_page.py                 # 5000 clips, 100 text + 50 "more like this" queries
    python benchmarks/bench_search_page.py --clips 1000 --queries 30

Set-up (not timed): a run with the demo's architecture and text model (conf_demo.yaml: narrow CNN14, 300-d,
all-MiniLM-L6-v2) and random weights; a folder of ``--clips`` short wavs; and its cached search index, with
random unit vectors as embeddings (a search's cost does not depend on the values). Then, timed:

* **start-up with a cached index**: ``search.py --serve`` is started in a subprocess; the time until ``GET /``
  answers 200 (Python start, imports, run and text-model loading, index load and check), and until the page
  has rendered its index status in the browser.
* **query to rendered results**: headless Chromium (Selenium) submits each query; the page's own performance
  marks (``performance.getEntriesByName("query")``) measure from the request to the painted results
  (``requestAnimationFrame`` + a task after the DOM update). The server's time per query is reported too.

Needs Chromium and chromedriver (apt-get install chromium chromium-driver). Prints a markdown table and
writes JSON to benchmarks/results/. Run it from the repository root with this checkout importable
(``pip install -e .`` or ``PYTHONPATH=.``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml
from machine import cpu_name  # benchmarks/machine.py (this folder is on sys.path when run as a script)

from models.core import build_model
from utils.base.config import load_config, to_dict
from utils.search.browser import find_chromium, start_chromium
from utils.search.index import FolderIndex, scan_audio_files
from utils.search.retriever import Retriever

ROOT = Path(__file__).resolve().parent.parent

RESULTS = Path(__file__).resolve().parent / "results"
SUBJECTS = ["a dog", "a man", "a woman", "children", "a car", "a train", "birds", "a crowd", "water", "the wind",
            "an engine", "a door", "rain", "a bell", "a machine", "footsteps", "a truck", "a cat", "waves"]
VERBS = ["barks", "talks", "laughs", "passes by", "rumbles", "chirps", "cheers", "flows", "howls", "hums",
         "creaks", "falls", "rings", "whirs", "splashes", "honks", "meows", "roars"]
PLACES = ["in the distance", "on a busy street", "in a large room", "near a river", "inside a tunnel",
          "while birds sing", "as cars pass", "in the rain", "at night", "close to the microphone"]


def captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)}" for _ in range(n)]


def make_run(run_dir: Path) -> Path:
    """The demo's model (conf_demo.yaml) with random weights, saved as main.py leaves a run."""
    conf = load_config(ROOT / "conf_demo.yaml")
    conf.run.dir, conf.run.name = str(run_dir.parent), run_dir.name
    torch.manual_seed(0)
    model = build_model(conf, 384, load_prior=False)  # all-MiniLM-L6-v2 vectors are 384-d
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"model": model.state_dict(), "config": to_dict(conf), "text_dim": 384, "epoch": 0},
               run_dir / "checkpoints" / "best.pt")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(conf), sort_keys=False), encoding="utf-8")
    return run_dir


def make_folder(folder: Path, n: int) -> None:
    """``n`` wavs of 1 s (a few distinct tones, 100 per subfolder)."""
    sr = 16000
    t = np.arange(sr) / sr
    tones = [(0.2 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (220, 440, 880, 1760, 3520)]
    for i in range(n):
        sub = folder / f"part{i // 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        sf.write(sub / f"clip_{i:05d}.wav", tones[i % len(tones)], sr)


def cache_index(run_dir: Path, folder: Path) -> int:
    """Write the folder's search index as index_folder would, with random unit embeddings."""
    r = Retriever.from_run(run_dir, device="cpu")
    found = scan_audio_files(folder.resolve())
    emb = np.random.default_rng(0).normal(size=(len(found), r.conf.model.audio_enc.out_dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)  # (n, E)
    paths = list(found)
    FolderIndex(folder.resolve(), r.model_key(), paths, np.array([found[p][0] for p in paths], np.int64),
                np.array([found[p][1] for p in paths], np.int64), emb).save(r.index_path(folder))
    return len(paths)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, folder: Path, port: int) -> tuple[subprocess.Popen, float, str]:
    """Start search.py --serve; returns (process, seconds until GET / answers 200, url)."""
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "search.py"), "--run", str(run_dir), "--audio", str(folder),
                             "--serve", "--port", str(port), "--device", "cpu"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"search.py --serve exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return proc, time.perf_counter() - start, url
        except OSError:
            time.sleep(0.05)


def run_queries(driver, queries: list[str] | None, likes: int) -> tuple[list[float], list[float]]:
    """Submit each query (or click "more like this" ``likes`` times); the page's query measures and server ms."""
    driver.execute_script("performance.clearMeasures('query');")
    server = []
    items = queries if queries is not None else range(likes)
    for i, q in enumerate(items):
        seq = driver.execute_script("return Number(document.getElementById('results').dataset.seq || 0);")
        if queries is not None:
            driver.execute_script("document.getElementById('query').value = arguments[0];"
                                  "document.querySelector('#search-form button').click();", q)
        else:
            driver.execute_script("const b = document.querySelectorAll('#results button.like');"
                                  "b[arguments[0] % b.length].click();", i)
        deadline = time.monotonic() + 60
        while driver.execute_script("const l = document.getElementById('results');"
                                    "return l.dataset.state === 'done' ? Number(l.dataset.seq) : -1;") <= seq:
            if time.monotonic() > deadline:
                raise SystemExit(f"no results for query {i}")
            time.sleep(0.005)
        server.append(float(driver.execute_script("return Number(document.getElementById('results').dataset.serverMs);")))
    measures = driver.execute_script("return performance.getEntriesByName('query').map(e => e.duration);")
    return [float(m) for m in measures], server


def summary(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"n": int(v.size), "median_ms": round(float(np.median(v)), 1), "p95_ms": round(float(np.percentile(v, 95)), 1),
            "max_ms": round(float(v.max()), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=100, help="text queries (after 5 warm-up ones)")
    parser.add_argument("--likes", type=int, default=50, help="'more like this' clicks")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    found = find_chromium()
    if found is None:
        raise SystemExit("no Chromium: apt-get install chromium chromium-driver")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-page-") as tmp:
        tmp = Path(tmp)
        run_dir = make_run(tmp / "runs" / "bench")
        make_folder(tmp / "sounds", args.clips)
        n = cache_index(run_dir, tmp / "sounds")
        proc, first_page_s, url = start_server(run_dir, tmp / "sounds", free_port())
        driver = start_chromium(*found)
        try:
            start = time.perf_counter()
            driver.get(url)
            while not driver.execute_script("return document.body.dataset.ready === '1';"):
                time.sleep(0.01)
            status_rendered_s = first_page_s + time.perf_counter() - start
            status = driver.find_element("id", "status-line").text
            driver.execute_script("document.getElementById('k').value = arguments[0];", str(args.k))
            run_queries(driver, captions(5, seed=1), 0)  # warm-up
            text_ms, text_server = run_queries(driver, captions(args.queries), 0)
            like_ms, like_server = run_queries(driver, None, args.likes)
        finally:
            driver.quit()
            proc.terminate()
            proc.wait(timeout=30)
    ready = re.search(r"ready in ([0-9.]+) s", proc.stderr.read())  # search.py: index + models, after imports
    result = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "chromium": subprocess.run([found[0], "--version"], capture_output=True,
                                                                          text=True).stdout.strip(),
                    "load_before": [round(x, 2) for x in load_before],
                    "load_after": [round(x, 2) for x in os.getloadavg()]},
        "clips": n, "k": args.k, "status_line": status,
        "first_page_s": round(first_page_s, 2), "status_rendered_s": round(status_rendered_s, 2),
        "server_ready_s": float(ready.group(1)) if ready else None,
        "text_query": summary(text_ms), "text_query_server": summary(text_server),
        "more_like_this": summary(like_ms), "more_like_this_server": summary(like_server),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"search_page_{time.strftime('%Y%m%d_%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1))
    m = result["machine"]
    print(f"{n} clips, k={args.k}; {m['cpu']} ({m['cores']} cores), load {m['load_before']} -> {m['load_after']}")
    print(f"time to first page (cached index): {result['first_page_s']} s; index status rendered: "
          f"{result['status_rendered_s']} s; of which cached index checked + text model loaded in "
          f"{result['server_ready_s']} s (the rest: Python start and imports)")
    print("| query (browser, request -> painted results) | n | median ms | p95 ms | max ms | server median ms |")
    print("|---|---|---|---|---|---|")
    for name, key in (("text", "text_query"), ("more like this", "more_like_this")):
        s, srv = result[key], result[f"{key}_server"]
        print(f"| {name} | {s['n']} | {s['median_ms']} | {s['p95_ms']} | {s['max_ms']} | {srv['median_ms']} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
