"""Stage 3 side by side: the baseline's per-caption ``model.encode(caption)`` loop vs our batched ``encode``.

    python benchmarks/bench_sbert.py                                  # all-mpnet-base-v2, 1000 captions
    python benchmarks/bench_sbert.py --model all-MiniLM-L6-v2 --n 2000

Both sides embed the same synthetic Clotho-like captions (8-20 words), each in a fresh subprocess so that
peak RSS (``ru_maxrss``, model load included) is measured separately. Reports captions/s, the speed ratio and
the largest absolute difference between the two outputs; prints a markdown table and writes JSON to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import (  # benchmarks/machine.py (this folder is on sys.path when run as a script)
    cpu_name,
    save_result,
)

from utils.base.devices import resolve_device
from utils.text.sbert import encode, load_sbert, resolve_model_path
from utils.text.sbert_download import MPNET_NAME

SUBJECTS = ["a dog", "a man", "a woman", "children", "a car", "a train", "birds", "a crowd", "water", "the wind",
            "an engine", "a door", "rain", "a bell", "a machine", "footsteps", "a truck", "a cat", "waves", "thunder"]
VERBS = ["barks", "talks", "laughs", "passes by", "rumbles", "chirps", "cheers", "flows", "howls", "hums",
         "creaks", "falls", "rings", "whirs", "echo", "splashes", "honks", "meows", "crash", "roars"]
PLACES = ["in the distance", "on a busy street", "in a large room", "near a river", "inside a tunnel",
          "on a metal roof", "in the background", "through the trees", "at a train station", "on gravel"]
EXTRAS = ["while people are talking", "and then stops", "as a car drives past", "over and over again",
          "with a loud clatter", "while the wind is blowing hard", "and someone whistles a tune",
          "before it fades away slowly", "as birds are chirping nearby", "in a steady rhythm"]
ADJECTIVES = ["loud", "faint", "distant", "heavy", "soft", "metallic", "rhythmic", "constant", "sudden", "low"]


def synthetic_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` Clotho-like captions (8-20 words), reproducible from ``seed``."""
    rng = random.Random(seed)
    captions = []
    while len(captions) < n:
        *det, noun = rng.choice(SUBJECTS).split(" ", 1)  # det: [] or ['a'] / ['an'] / ['the']
        if rng.random() < 0.5:
            noun = f"{rng.choice(ADJECTIVES)} {noun}"
        if det and det[0] in ("a", "an"):
            det = ["an" if noun[0] in "aeiou" else "a"]
        words = [*det, *noun.split(), *rng.choice(VERBS).split(), *rng.choice(PLACES).split()]
        for extra in rng.sample(EXTRAS, k=3):
            if len(words) + len(extra.split()) <= 20 and (len(words) < 8 or rng.random() < 0.5):
                words += extra.split()
        if 8 <= len(words) <= 20:
            sentence = " ".join(words)
            captions.append(sentence[0].upper() + sentence[1:] + ".")
    return captions


def child(args: argparse.Namespace) -> None:
    """One side of the comparison; prints one JSON line and saves the embeddings to ``--out-npy``."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    captions = json.loads(Path(args.captions).read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    model = load_sbert(args.model, args.device)
    load_s = time.perf_counter() - t0
    model.encode(captions[0])  # same one-caption warm-up on both sides
    t0 = time.perf_counter()
    if args.child == "baseline":
        embeds = np.stack([model.encode(caption) for caption in captions])  # the baseline's loop; (N, D)
    else:
        embeds = encode(model, captions, args.batch_size, str(resolve_device(args.device)), progress=False)  # (N, D)
    seconds = time.perf_counter() - t0
    np.save(args.out_npy, embeds.astype(np.float32))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({"method": args.child, "seconds": seconds, "load_s": load_s, "peak_rss_mib": peak_mib,
                      "torch_threads": torch.get_num_threads(), "dim": int(embeds.shape[1])}))


def run_side(method: str, args: argparse.Namespace, captions_path: Path, out_npy: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--captions", str(captions_path), "--out-npy",
           str(out_npy), "--model", args.model, "--batch-size", str(args.batch_size), "--device", args.device,
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{method} side failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    cpu = cpu_name()
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=MPNET_NAME, help="model name or directory (resolve_model_path)")
    parser.add_argument("--n", type=int, default=1000, help="captions to embed")
    parser.add_argument("--batch-size", type=int, default=128, help="captions per batch on the batched side")
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'auto'")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two sides this many times; best time")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per side; 0 = torch's default")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic captions")
    parser.add_argument("--child", choices=["baseline", "batched"], help=argparse.SUPPRESS)
    parser.add_argument("--captions", help=argparse.SUPPRESS)
    parser.add_argument("--out-npy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    name, args.model = args.model, resolve_model_path(args.model)
    captions = synthetic_captions(args.n, args.seed)
    runs: dict[str, list[dict]] = {"baseline": [], "batched": []}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_sbert-") as tmp:
        captions_path = Path(tmp) / "captions.json"
        captions_path.write_text(json.dumps(captions), encoding="utf-8")
        for _ in range(args.repeats):
            for method in runs:
                runs[method].append(run_side(method, args, captions_path, Path(tmp) / f"{method}.npy"))
        max_abs_diff = float(np.abs(np.load(Path(tmp) / "baseline.npy") - np.load(Path(tmp) / "batched.npy")).max())
    best = {m: min(r, key=lambda x: x["seconds"]) | {"peak_rss_mib": max(x["peak_rss_mib"] for x in r)}
            for m, r in runs.items()}
    for result in best.values():
        result["captions_per_s"] = args.n / result["seconds"]
    ratio = best["batched"]["captions_per_s"] / best["baseline"]["captions_per_s"]
    report = {"benchmark": "sbert", "model": name, "model_path": args.model, "n": args.n, "batch_size": args.batch_size,
              "device": args.device, "threads": best["batched"]["torch_threads"],
              "repeats": args.repeats, "machine": machine(),
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "results": best, "runs": runs,
              "speedup": ratio, "max_abs_diff": max_abs_diff, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print_table(report)
    save_result(f"sbert_{Path(name).name}_{args.device}_n{args.n}", report)


def print_table(report: dict) -> None:
    m = report["machine"]
    print(f"\nSentence-BERT caption encoding: {report['model']}, {report['n']} captions, "
          f"device {report['device']} ({report['threads']} torch threads), {m['cpu']} ({m['cores']} cores), "
          f"torch {m['torch']}, "
          f"load avg {report['loadavg_before'][0]:.1f}\n")
    print("| method | captions/s | time (s) | peak RSS (MiB) |")
    print("|---|---:|---:|---:|")
    names = {"baseline": "baseline: `model.encode(caption)` per caption",
             "batched": f"ours: batched `encode` (batch {report['batch_size']}, length-sorted)"}
    for method, result in report["results"].items():
        print(f"| {names[method]} | {result['captions_per_s']:.1f} | {result['seconds']:.2f} | "
              f"{result['peak_rss_mib']:.0f} |")
    print(f"\nspeed-up: {report['speedup']:.2f}x   max |baseline - ours|: {report['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
