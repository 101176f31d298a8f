"""Stage 2 side by side: the baseline's clip-by-clip librosa loop vs our ``extract_split`` on all cores.

    python benchmarks/bench_logmel.py                      # 200 synthetic 30 s clips at 44.1 kHz
    python benchmarks/bench_logmel.py --n 100 --repeats 2

Both sides read the same 16-bit wavs (written to a temporary folder) and write one HDF5 each; each side
runs in a fresh subprocess, so its peak RSS (``ru_maxrss``; for ours also the largest pool worker,
RUSAGE_CHILDREN) is measured separately. Imports and librosa's one-time numba loading are not timed.
The baseline runs twice: with numpy's default BLAS threads (as the baseline's code does) and with one
BLAS thread (faster on 2 cores); the speed-up is quoted against the faster of the two. Reports wall time, CPU time, clips/s, the speed ratio and the
largest absolute difference between the two outputs; prints a markdown table and writes JSON to
benchmarks/results/. ``--profile`` also times each implementation of the formula on one clip, one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from machine import (  # benchmarks/machine.py (this folder is on sys.path when run as a script)
    cpu_name,
    save_result,
)

# --------------------------------------------------------------------------------------------
# Synthetic clips
# --------------------------------------------------------------------------------------------


def synthetic_clip(seconds: float, sr: int, seed: int) -> np.ndarray:
    """Clotho-like content, 16-bit: coloured noise, a harmonic tone, an envelope, a near-silent gap."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n, dtype=np.float64) / sr
    pole = rng.uniform(0.5, 0.99)
    x = lfilter([1 - pole], [1, -pole], rng.standard_normal(n)) * rng.uniform(0.5, 3)  # low-passed noise
    f0 = rng.uniform(80, 1500)
    for k in range(1, 6):
        x += rng.uniform(0, 0.3) / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3))
    x *= 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.05, 2) * t)  # slow envelope
    gap = int(rng.uniform(0.05, 0.2) * n)
    start = int(rng.uniform(0, n - gap))
    x[start:start + gap] *= 1e-4  # near silence
    x *= rng.uniform(0.2, 0.9) / max(np.abs(x).max(), 1e-9)
    return (np.round(x * 32767)).astype(np.int16)


def make_clips(folder: Path, n: int, seconds: float, sr: int) -> list[dict]:
    """Write ``n`` wavs and return their stage-1 style rows (path relative to ``folder``)."""
    import soundfile as sf

    rows = []
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = f"clip_{i:04d}.wav"
        path = folder / "audio" / name
        if not path.exists():
            sf.write(path, synthetic_clip(seconds, sr, i), sr, subtype="PCM_16")
        rows.append({"fid": f"bench_{i:04d}", "fname": name, "path": f"audio/{name}", "duration": str(seconds),
                     "sample_rate": str(sr)})
    return rows


# --------------------------------------------------------------------------------------------
# The two sides (each in its own subprocess)
# --------------------------------------------------------------------------------------------


def baseline_side(rows: list[dict], root: Path, out: Path) -> None:
    """The baseline's way: one process, clip by clip, librosa load + melspectrogram + log, one dataset at a time."""
    import librosa

    with h5py.File(out, "w") as h5:
        for row in rows:
            y, sr = librosa.load(root / row["path"], sr=None, mono=True)
            win = int(round(0.040 * sr))
            hop = int(round(0.020 * sr))
            n_fft = 2 ** int(np.ceil(np.log(win) / np.log(2.0)))
            mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop, win_length=win,
                                                 n_mels=64)  # (64, T)
            h5[row["fid"]] = np.log(mel + np.spacing(1)).T.astype(np.float32)  # (T, 64)


def ours_side(rows: list[dict], root: Path, out: Path, workers: int) -> None:
    from utils.features.extract import extract_split

    extract_split(rows, root, out, out.with_suffix(".skipped.csv"), workers=workers, device="cpu",
                  progress=False)


def child(args: argparse.Namespace) -> None:
    """Run one side; print one JSON line."""
    root = Path(args.data)
    rows = json.loads((root / "rows.json").read_text(encoding="utf-8"))
    out = Path(args.out)
    t0 = time.perf_counter()  # imports and one-time JIT loading are not timed, on either side
    if args.child.startswith("baseline"):
        import librosa.feature

        librosa.feature.melspectrogram(y=np.zeros(44100, np.float32), sr=44100)  # loads librosa's numba code
    else:
        import librosa.filters  # noqa: F401  (the mel banks' source; the baseline's warm-up above loads it too)
        import torch  # noqa: F401

        import utils.features.extract  # noqa: F401
    import_s = time.perf_counter() - t0
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    if args.child.startswith("baseline"):
        baseline_side(rows, root, out)
    else:
        ours_side(rows, root, out, args.workers)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    self_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    children_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # largest child
    print(json.dumps({"method": args.child, "seconds": seconds, "cpu_seconds": cpu, "import_s": import_s,
                      "peak_rss_mib": self_mib, "peak_rss_children_mib": children_mib}))


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


SIDES = {  # method -> (description, environment overrides)
    "baseline": ("baseline: librosa.load + melspectrogram, clip by clip, 1 process (default BLAS threads)", {}),
    "baseline_1t": ("baseline, BLAS limited to 1 thread", {v: "1" for v in
                                                          ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}),
    "ours": ("ours: `extract_split`, {workers} worker processes", {}),
}


def run_side(method: str, data: Path, out: Path, workers: int) -> dict:
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", method, "--data", str(data), "--out", str(out),
           "--workers", str(workers)]
    env = {**os.environ, **SIDES[method][1]}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        sys.exit(f"{method} side failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(a: Path, b: Path) -> float:
    """Largest |a - b| over every clip; the two files must hold the same clips and shapes."""
    worst = 0.0
    with h5py.File(a, "r") as ha, h5py.File(b, "r") as hb:
        if sorted(ha) != sorted(hb):
            sys.exit(f"{a} and {b} hold different clips")
        for fid in ha:
            x, y = ha[fid][()], hb[fid][()]
            if x.shape != y.shape:
                sys.exit(f"clip {fid}: shapes {x.shape} vs {y.shape}")
            worst = max(worst, float(np.abs(x - y).max()))
    return worst


# --------------------------------------------------------------------------------------------
# Per-implementation profile (one clip, one thread)
# --------------------------------------------------------------------------------------------


def profile(path: Path, repeats: int = 7) -> dict:
    """Best-of-``repeats`` CPU ms per step on one clip, one thread: decoding and each implementation."""
    import librosa
    import torch
    from threadpoolctl import threadpool_limits

    from utils.data.audio import load_audio
    from utils.features.logmel import logmel_librosa, logmel_numpy, logmel_torch

    torch.set_num_threads(1)
    y, sr = load_audio(path)
    steps = {
        "decode: librosa.load": lambda: librosa.load(path, sr=None, mono=True),
        "decode: utils.data.audio.load_audio": lambda: load_audio(path),
        "formula: librosa melspectrogram (baseline)": lambda: logmel_librosa(y, sr),
        "formula: logmel_numpy, fft='scipy'": lambda: logmel_numpy(y, sr, fft="scipy"),
        "formula: logmel_numpy, fft='torch' (ours)": lambda: logmel_numpy(y, sr, fft="torch"),
        "formula: logmel_torch (torch.stft)": lambda: logmel_torch(y, sr),
    }
    result = {}
    with threadpool_limits(1):
        for name, fn in steps.items():
            fn()
            best = float("inf")
            for _ in range(repeats):
                t0 = time.process_time()
                fn()
                best = min(best, time.process_time() - t0)
            result[name] = best * 1000
    return result


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = cpu_name()
    import librosa
    import scipy

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "librosa": librosa.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="synthetic clips")
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length (s)")
    parser.add_argument("--sr", type=int, default=44100, help="sample rate (Hz)")
    parser.add_argument("--workers", type=int, default=0, help="our side's processes; 0 = all cores")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two sides this many times; best time")
    parser.add_argument("--data", help="keep the wavs in this folder (reused by later runs) instead of a temp dir")
    parser.add_argument("--profile", action="store_true", help="also time each implementation on one clip")
    parser.add_argument("--child", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory(prefix="bench_logmel-") as tmp:
        data = Path(args.data) if args.data else Path(tmp)
        t0 = time.perf_counter()
        rows = make_clips(data, args.n, args.seconds, args.sr)
        (data / "rows.json").write_text(json.dumps(rows), encoding="utf-8")
        print(f"{args.n} clips of {args.seconds:g} s at {args.sr} Hz ready in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        runs: dict[str, list[dict]] = {method: [] for method in SIDES}
        load_before = os.getloadavg()
        for _ in range(args.repeats):
            for method in runs:
                runs[method].append(run_side(method, data, Path(tmp) / f"{method}.hdf5", args.workers))
        load_after = os.getloadavg()
        max_abs_diff = max(compare(Path(tmp) / f"{m}.hdf5", Path(tmp) / "ours.hdf5") for m in ("baseline", "baseline_1t"))
        steps = profile(data / rows[0]["path"]) if args.profile else None

    best = {m: min(r, key=lambda x: x["seconds"]) for m, r in runs.items()}
    for result in best.values():
        result["clips_per_s"] = args.n / result["seconds"]
    report = {"benchmark": "logmel", "n": args.n, "seconds_per_clip": args.seconds, "sr": args.sr,
              "workers": args.workers or len(os.sched_getaffinity(0)), "repeats": args.repeats, "machine": machine(),
              "loadavg_before": load_before, "loadavg_after": load_after, "results": best, "runs": runs,
              "speedup": min(best["baseline"]["seconds"], best["baseline_1t"]["seconds"]) / best["ours"]["seconds"],
              "cpu_ratio": min(best["baseline"]["cpu_seconds"], best["baseline_1t"]["cpu_seconds"])
              / best["ours"]["cpu_seconds"],
              "max_abs_diff": max_abs_diff, "profile_ms": steps, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print_table(report)
    save_result(f"logmel_n{args.n}", report)
    if max_abs_diff > 1e-4:
        sys.exit(f"outputs differ by {max_abs_diff:.2e} > 1e-4")


def print_table(report: dict) -> None:
    m = report["machine"]
    print(f"\nLog-mel extraction: {report['n']} clips x {report['seconds_per_clip']:g} s at {report['sr']} Hz "
          f"(16-bit wav), {m['cpu']} ({m['cores']} cores), numpy {m['numpy']}, scipy {m['scipy']}, "
          f"librosa {m['librosa']}, load avg {report['loadavg_before'][0]:.1f} -> {report['loadavg_after'][0]:.1f}\n")
    print("| method | clips/s | wall (s) | CPU (s) | peak RSS (MiB) | peak RSS, largest worker (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for method, r in report["results"].items():
        kids = f"{r['peak_rss_children_mib']:.0f}" if method == "ours" else "-"
        print(f"| {SIDES[method][0].format(workers=report['workers'])} | {r['clips_per_s']:.2f} | "
              f"{r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['peak_rss_mib']:.0f} | {kids} |")
    print(f"\nspeed-up vs the faster baseline (wall): {report['speedup']:.2f}x   CPU time ratio: "
          f"{report['cpu_ratio']:.2f}x   max |baseline - ours|: {report['max_abs_diff']:.2e}")
    if report["profile_ms"]:
        print(f"\n| one {report['seconds_per_clip']:g} s clip, 1 thread | CPU ms (best of 7) |\n|---|---:|")
        for name, ms in report["profile_ms"].items():
            print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
