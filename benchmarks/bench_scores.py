"""Benchmark: scoring a Clotho-evaluation-sized split, and search latency on a 5000-clip folder index.

    python benchmarks/bench_scores.py [--device cpu|cuda|auto] [--naive-pairs 50000] [--subset-w1 16]

Synthetic, Clotho-shaped inputs: 1045 clips x 5225 captions (5 per clip), 768-d SBERT vectors (mpnet),
300-d joint space, log-mels of 750-1500 frames x 64 (15-30 s clips).

1. Scoring stage, from the clips' audio embeddings and the captions' SBERT vectors to the full score matrix:
   ours (one batched text-branch call + one matmul, as utils.evaluation.scoring.score_split) vs a re-implementation of
   the baseline's loop (one text-branch call and one score per (caption, clip) pair). The loop is timed on a
   random sample of pairs and extrapolated linearly to all 5.46 M pairs.
2. End to end with the CNN14 audio encoder: ours (utils.evaluation.embedding.embed_audio, clips batched by length) vs
   the baseline (one clip at a time, then the per-pair loop). The audio encoders are timed on a subset of clips
   at evenly spaced length quantiles (so it is as long as Clotho's on average) and extrapolated by total frames; width 1.0 (the real CNN14) and 0.125.
3. Search latency per query on a 5000-clip index (utils.search.retriever.Retriever): cached-index load + refresh,
   caption embedding (all-MiniLM-L6-v2 + projection, when installed), exact numpy top-10, FAISS top-10.

Prints a markdown table and writes JSON to benchmarks/results/bench_scores_<device>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from machine import cpu_name  # benchmarks/machine.py (this folder is on sys.path when run as a script)

from models.audio_encoders import CNN14Encoder
from models.core import DualEncoderModel
from models.text_encoders import SentBERTBaseEncoder
from utils.base.config import Config, to_dict
from utils.base.devices import amp_dtype, one_thread, resolve_device
from utils.evaluation import embedding
from utils.evaluation.embedding import TEXT_VECTOR_BATCH, embed_audio, embed_text
from utils.evaluation.metrics import top_k
from utils.search.index import FolderIndex, scan_audio_files
from utils.search.retriever import Retriever

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 3) -> tuple[float, object]:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up), and its last result."""
    out = fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def timed_round_robin(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int = 3) -> dict[str, float]:
    """Median wall time of each ``fns[name]()``, the runs taken in turn (a, b, c, a, b, c, ...) after one warm-up
    each, so that a drift of the machine's speed during the measurement (other load, clock, allocator state)
    falls on every side alike rather than on whichever runs first."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
        sync(device)
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def machine(device: torch.device) -> str:
    cpu = cpu_name()
    desc = f"{cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if device.type == "cuda":
        desc += f", GPU {torch.cuda.get_device_name(device)}"
    return desc


def build_model(width: float, text_dim: int, out_dim: int, device: torch.device) -> DualEncoderModel:
    torch.manual_seed(0)
    model = DualEncoderModel(CNN14Encoder(out_dim=out_dim, width=width), SentBERTBaseEncoder(text_dim, out_dim))
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# The two ways of scoring
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def ours_scores(model, audio_emb: torch.Tensor, vectors: np.ndarray, device, dtype) -> np.ndarray:
    """One text-branch call over every caption, one matmul: ``(n_captions, n_clips)``."""
    text = embed_text(model, vectors, TEXT_VECTOR_BATCH, device, dtype)  # (n_captions, E)
    return model.score(audio_emb, text).numpy()


@torch.no_grad()
def naive_pair_loop(model, audio_emb: torch.Tensor, vectors: np.ndarray, pairs: np.ndarray,
                    device) -> np.ndarray:
    """The baseline's loop: for each (caption, clip) pair, a text-branch call on the caption and a score."""
    out = np.empty(len(pairs), dtype=np.float32)
    audio_dev = audio_emb.to(device)
    for n, (i, j) in enumerate(pairs):
        text = model.text_branch(torch.as_tensor(vectors[i][None]).to(device))  # (1, E)
        out[n] = float(model.score(audio_dev[j][None], text)[0, 0])
    return out


def best_threads(fn, device: torch.device) -> int:
    """The faster torch thread count for ``fn`` (default or 1): on a busy CPU, OpenMP's 2-thread barriers
    make per-pair tiny ops much slower than one thread, which would flatter our speed-up."""
    default = torch.get_num_threads()
    times = {}
    for n in sorted({default, 1}):
        torch.set_num_threads(n)
        fn()  # warm-up
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times[n] = time.perf_counter() - start
    torch.set_num_threads(default)
    return min(times, key=times.get)


@torch.no_grad()
def naive_audio(model, feats: list[np.ndarray], device) -> torch.Tensor:
    """The baseline's audio embedding: one clip at a time (no padding)."""
    return torch.cat([model.audio_branch(torch.from_numpy(f)[None].to(device)).float().cpu() for f in feats])


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def bench_scoring(args, device, dtype, rng) -> dict:
    model = build_model(0.125, args.text_dim, args.out_dim, device)  # only the text branch is used here
    audio = torch.nn.functional.normalize(torch.randn(args.clips, args.out_dim), dim=-1)  # (n_clips, E)
    vectors = rng.normal(size=(args.captions, args.text_dim)).astype(np.float32)  # (n_captions, D)
    t_ours, scores = timed(lambda: ours_scores(model, audio, vectors, device, dtype), device)
    n_pairs = args.clips * args.captions
    sample = min(args.naive_pairs, n_pairs)
    flat = rng.choice(n_pairs, size=sample, replace=False)
    pairs = np.stack([flat // args.clips, flat % args.clips], axis=1)
    threads = best_threads(lambda: naive_pair_loop(model, audio, vectors, pairs[:1000], device), device)
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        naive = naive_pair_loop(model, audio, vectors, pairs, device)
        sync(device)
        t_sample = time.perf_counter() - start
    finally:
        torch.set_num_threads(default_threads)
    t_naive = t_sample * n_pairs / sample
    err = float(np.abs(naive - scores[pairs[:, 0], pairs[:, 1]]).max())
    return {"n_clips": args.clips, "n_captions": args.captions, "n_pairs": n_pairs, "ours_s": t_ours,
            "naive_threads": threads, "naive_sample_pairs": sample, "naive_sample_s": t_sample, "naive_s_extrapolated": t_naive,
            "speedup": t_naive / t_ours, "max_abs_diff": err}


def clotho_like_subset(lengths: np.ndarray, size: int) -> np.ndarray:
    """Indices of ``size`` clips at evenly spaced quantiles of ``lengths``: the subset's length distribution
    matches the whole split's (a random handful can be all long or all short)."""
    order = np.argsort(lengths, kind="stable")
    return order[np.linspace(0, len(order) - 1, min(size, len(order))).round().astype(int)]


def bench_end_to_end(args, device, dtype, rng, width: float, subset: int, scoring: dict) -> dict:
    """Audio encoders timed on ``subset`` clips, extrapolated to ``args.clips`` by total frames; plus section 1.

    Also times ours without the CPU frame cap (``utils.evaluation.embedding.CPU_BATCH_FRAMES``), as before the cap.
    """
    model = build_model(width, args.text_dim, args.out_dim, device)
    lengths = rng.integers(750, 1501, size=args.clips)  # frames of 15-30 s clips at a 20 ms hop
    chosen = clotho_like_subset(lengths, subset)
    feats = [rng.normal(size=(int(lengths[k]), 64)).astype(np.float32) for k in chosen]  # (T, 64) each
    batch = min(args.eval_batch_size, len(feats))

    def ours():
        return embed_audio(model, lambda k: feats[k], [f.shape[0] for f in feats], batch, device, dtype)

    def uncapped():
        cap = embedding.CPU_BATCH_FRAMES
        embedding.CPU_BATCH_FRAMES = 1 << 40  # no cap: batches of up to `batch` clips
        try:
            return ours()
        finally:
            embedding.CPU_BATCH_FRAMES = cap

    t = timed_round_robin({"ours": ours, "uncapped": uncapped, "naive": lambda: naive_audio(model, feats, device)},
                          device, repeats=args.e2e_repeats)
    t_ours_audio, t_uncapped_audio, t_naive_audio = t["ours"], t["uncapped"], t["naive"]
    scale = float(lengths.sum() / lengths[chosen].sum())  # total frames, all clips / timed clips
    ours_total = t_ours_audio * scale + scoring["ours_s"]
    naive = t_naive_audio * scale + scoring["naive_s_extrapolated"]
    return {"width": width, "subset_clips": len(feats), "batch_size": batch, "frames_scale": scale,
            "subset_frames": [int(lengths[chosen].min()), int(lengths[chosen].max())],
            "ours_audio_s": t_ours_audio * scale, "uncapped_audio_s": t_uncapped_audio * scale,
            "naive_audio_s": t_naive_audio * scale, "ours_total_s": ours_total, "naive_total_s": naive,
            "speedup": naive / ours_total, "audio_speedup": t_naive_audio / t_ours_audio,
            "uncapped_audio_speedup": t_naive_audio / t_uncapped_audio}


def bench_search(args, device, rng) -> dict:
    """A 5000-file folder (tiny placeholder files) with a matching cached index; time what a query costs."""
    out: dict = {"n_files": args.index_clips}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        conf = Config()
        conf.model.audio_enc.width, conf.model.audio_enc.init = 0.125, "random"
        conf.text.model = "all-MiniLM-L6-v2"
        run_dir = tmp / "run"
        (run_dir / "checkpoints").mkdir(parents=True)
        model = build_model(0.125, 384, args.out_dim, torch.device("cpu"))
        torch.save({"model": model.state_dict(), "config": to_dict(conf), "text_dim": 384},
                   run_dir / "checkpoints" / "best.pt")
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(conf)))
        folder = tmp / "sounds"
        for sub in range(50):  # 50 folders of 100 files, as a real collection
            (folder / f"d{sub:02d}").mkdir(parents=True)
            for k in range(args.index_clips // 50):
                (folder / f"d{sub:02d}" / f"clip_{k:03d}.wav").write_bytes(b"x")
        retriever = Retriever.from_run(run_dir, device=str(device))
        found = scan_audio_files(folder.resolve())
        emb = rng.normal(size=(len(found), args.out_dim)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        FolderIndex(folder.resolve(), retriever.model_key(), list(found),
                    np.array([v[0] for v in found.values()], np.int64),
                    np.array([v[1] for v in found.values()], np.int64), emb).save(retriever.index_path(folder))
        t_load, update = timed(lambda: Retriever(retriever.run).index_folder(folder, progress=False),
                               torch.device("cpu"), repeats=5)
        assert update.reused == len(found) and not update.embedded, "the cached index should be reused"
        retriever.index_folder(folder, progress=False)
        out["index_load_refresh_s"] = t_load

        queries = unit_vectors(rng, args.queries, args.out_dim)
        index_emb = np.asarray(retriever.index.embeddings)  # (n_files, E) in memory, as this benchmark times

        def exact_one(q):
            scores = index_emb @ q  # (n_files,)
            return top_k(scores, 10)

        with one_thread():  # as Retriever.search runs a single query on the CPU
            start = time.perf_counter()
            for q in queries:
                exact_one(q)
            out["numpy_top10_ms"] = (time.perf_counter() - start) / len(queries) * 1e3
        try:
            index = retriever.index.faiss_index()
            index.search(queries[:1], 10)
            with one_thread():
                start = time.perf_counter()
                for q in queries:
                    index.search(q[None], 10)
                out["faiss_top10_ms"] = (time.perf_counter() - start) / len(queries) * 1e3
            _, rows = index.search(queries, 10)
            out["faiss_equals_numpy"] = bool(all(np.array_equal(r, exact_one(q)) for r, q in zip(rows, queries,
                                                                                                   strict=True)))
        except Exception as err:  # noqa: BLE001 - FAISS is optional; report why it was left out
            out["faiss_top10_ms"] = None
            out["faiss_error"] = str(err)[:200]
        try:
            captions = [f"a dog barks while car number {i} passes by in the rain" for i in range(args.queries)]
            retriever.embed_text(captions[:2])  # loads the SBERT model once
            with one_thread():
                start = time.perf_counter()
                for c in captions[: min(50, len(captions))]:
                    retriever.embed_text([c])
                out["embed_caption_ms"] = (time.perf_counter() - start) / min(50, len(captions)) * 1e3
            start = time.perf_counter()
            for c in captions[:20]:
                retriever.search(c, k=10)
            out["search_query_ms"] = (time.perf_counter() - start) / 20 * 1e3
        except Exception as err:  # noqa: BLE001 - the packaged MiniLM is optional here
            out["embed_caption_ms"] = out["search_query_ms"] = None
            out["text_model_error"] = str(err)[:200]
    return out


def unit_vectors(rng, n: int, dim: int) -> np.ndarray:
    q = rng.normal(size=(n, dim)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.1f} s"


def table(res: dict) -> str:
    s = res["scoring"]
    lines = [
        f"Machine: {res['machine']}; device {res['device']}, autocast {res['autocast']}. Peak RSS "
        f"{res['peak_rss_mb']:.0f} MB. 1-min load average {res['load_average_start'][0]:.1f} at the start, "
        f"{res['load_average_end'][0]:.1f} at the end.",
        "",
        "| measurement | ours | baseline-style | speed-up |",
        "|---|---|---|---|",
        f"| 1. scores {s['n_captions']} captions x {s['n_clips']} clips from embeddings "
        f"(baseline loop: {s['naive_sample_pairs']:,} random pairs timed with {s['naive_threads']} thread(s), "
        f"extrapolated to {s['n_pairs']:,}) "
        f"| {fmt_s(s['ours_s'])} | {fmt_s(s['naive_s_extrapolated'])} | {s['speedup']:.0f}x |",
    ]
    for e in res["end_to_end"]:
        lines.append(
            f"| 2. end to end, CNN14 width {e['width']} (audio timed on {e['subset_clips']} clips of "
            f"{e['subset_frames'][0]}-{e['subset_frames'][1]} frames, extrapolated by total frames to "
            f"{s['n_clips']}; ours batch {e['batch_size']}) | {fmt_s(e['ours_total_s'])} "
            f"(audio {fmt_s(e['ours_audio_s'])}) | {fmt_s(e['naive_total_s'])} (audio {fmt_s(e['naive_audio_s'])}) "
            f"| {e['speedup']:.1f}x |")
    lines += ["", "Audio embedding alone (same clips, same run):", "",
              "| CNN14 width | ours, frame-capped batches | ours, uncapped batches (before) | one clip at a time "
              "| capped vs one-by-one | uncapped vs one-by-one |", "|---|---|---|---|---|---|"]
    for e in res["end_to_end"]:
        lines.append(f"| {e['width']} | {fmt_s(e['ours_audio_s'])} | {fmt_s(e['uncapped_audio_s'])} | "
                     f"{fmt_s(e['naive_audio_s'])} | {e['audio_speedup']:.2f}x | {e['uncapped_audio_speedup']:.2f}x |")
    q = res.get("search")
    if q:
        lines += [
            "",
            f"Search on a {q['n_files']}-file index (per query unless noted):",
            "",
            "| step (one torch / BLAS thread per query, as Retriever.search on the CPU) | time |",
            "|---|---|",
            f"| load cached index + refresh (scan {q['n_files']} files), once per session | "
            f"{fmt_s(q['index_load_refresh_s'])} |",
            f"| embed one caption (all-MiniLM-L6-v2 + projection) | {ms(q.get('embed_caption_ms'))} |",
            f"| exact numpy scores + top-10 | {ms(q['numpy_top10_ms'])} |",
            f"| FAISS IndexFlatIP top-10 (same top-10 as numpy: {q.get('faiss_equals_numpy')}) | "
            f"{ms(q.get('faiss_top10_ms'))} |",
            f"| Retriever.search, whole query | {ms(q.get('search_query_ms'))} |",
        ]
    return "\n".join(lines)


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"],
                        help="autocast for ours (train.amp semantics: auto = bf16 on CUDA, off on CPU)")
    parser.add_argument("--clips", type=int, default=1045)
    parser.add_argument("--captions", type=int, default=5225)
    parser.add_argument("--text-dim", type=int, default=768)
    parser.add_argument("--out-dim", type=int, default=300)
    parser.add_argument("--naive-pairs", type=int, default=50_000, help="pairs timed in the baseline loop")
    parser.add_argument("--subset-w1", type=int, default=16, help="clips timed with the width-1.0 CNN14")
    parser.add_argument("--subset-small", type=int, default=128, help="clips timed with the width-0.125 CNN14")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="eval.batch_size for ours")
    parser.add_argument("--e2e-repeats", type=int, default=3)
    parser.add_argument("--index-clips", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/bench_scores_<device>.json)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    dtype = amp_dtype(args.amp, device)
    rng = np.random.default_rng(0)
    res = {"machine": machine(device), "device": str(device), "autocast": str(dtype).replace("torch.", "")
           if dtype else "off", "args": vars(args), "load_average_start": os.getloadavg()}
    print("1. scoring stage ...", file=sys.stderr, flush=True)
    res["scoring"] = bench_scoring(args, device, dtype, rng)
    res["end_to_end"] = []
    for width, subset in ((0.125, args.subset_small), (1.0, args.subset_w1)):
        print(f"2. end to end, width {width} ...", file=sys.stderr, flush=True)
        res["end_to_end"].append(bench_end_to_end(args, device, dtype, rng, width, subset, res["scoring"]))
    if not args.skip_search:
        print("3. search latency ...", file=sys.stderr, flush=True)
        res["search"] = bench_search(args, device, rng)
    res["peak_rss_mb"] = peak_rss_mb()
    res["load_average_end"] = os.getloadavg()
    report = table(res)
    print(report)
    out = Path(args.out) if args.out else RESULTS / f"bench_scores_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**res, "table": report}, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}", file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
