"""Verify a GPU machine in one command (under 10 minutes on one GPU, no Clotho needed).

    make setup && .venv/bin/python benchmarks/gpu_check.py            # on the GPU machine
    .venv/bin/python benchmarks/gpu_check.py --dry-run                # same plumbing, CPU, tiny sizes

Steps (each one's status, figures and seconds go into one JSON, plus a Markdown block for BENCHMARKS.md):

1. ``gpu_tests``: the suite's ``gpu``-marked tests (the CUDA half of tests/training/test_gpu_paths.py and others);
   the dry run runs the CPU half of tests/training/test_gpu_paths.py instead, with the resumes ``make test`` skips.
2. ``stage2``: stage 2 (``utils.features.extract.extract_split``) with ``--device cuda`` against the CPU path on 50
   synthetic clips; the largest absolute difference of the log-mels.
3. ``amp_curves``: 100 training steps in fp32 and in bf16 from the same initial weights on the same batches of
   Clotho-shaped synthetic data (15-30 s clips, 768-d text vectors); max / mean relative difference per step.
4. ``kill_resume``: main.py killed with SIGKILL mid-run on the GPU, then resumed (a test of test_gpu_paths.py).
5. ``bench_train``: ``benchmarks/bench_train.py --full --device cuda --max-steps N``: our epoch against the
   baseline-style loop (target >= 4x) and the projected 80-epoch time (target < 30 min on an H100).
6. ``bench_scores``: ``benchmarks/bench_scores.py --device cuda``.
7. ``memory``: peak GPU memory of a bf16 training step at batch 32 on 30 s clips, and the largest batch that
   fits (doubling until CUDA runs out of memory).

``--dry-run`` runs every step on the CPU at tiny sizes (a few minutes); its figures are labelled dry-run and
say nothing about a GPU. Exit status: 0 when every step passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from bench_logmel import compare, make_clips  # benchmarks/ is on sys.path when run as a script
from bench_train import BATCH_SIZE, FRAMES, N_MELS, TEXT_DIM, Sizes, load_split_data, write_synthetic_data
from machine import cpu_name

from models.core import build_model
from utils.base.config import Config, from_dict, to_dict
from utils.base.devices import amp_dtype, autocast
from utils.data.datasets import PairDataset, collate_pairs
from utils.features.extract import extract_split
from utils.run_record import git_commit
from utils.training.infonce import info_nce
from utils.training.setup import build_optimizer

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
AMP_MAX_REL = 0.05  # bf16 vs fp32 loss curves: largest relative difference allowed at any step
AMP_MEAN_REL = 0.02  # ... and on average over the steps
STAGE2_MAX_ABS = 1e-3  # GPU vs CPU log-mels (dB-like units): largest absolute difference allowed
TRAIN_RATIO_TARGET = 4.0  # our epoch vs the baseline-style loop
TRAIN_80_EPOCHS_TARGET_MIN = 30.0  # projected 80 epochs, minutes (H100 target)


@dataclass
class Plan:
    """Sizes of every step: the real check, or the tiny CPU dry run."""

    device: str
    stage2_clips: int
    stage2_seconds: float
    amp_steps: int
    amp_width: float
    amp_clips: int
    amp_batch: int
    amp_frames: int  # clips cropped to this many frames (0 = whole 15-30 s clips)
    bench_train_args: list[str]
    bench_scores_args: list[str]
    memory_width: float
    memory_frames: int
    memory_max_batch: int
    gpu_test_args: list[str]


def make_plan(args: argparse.Namespace) -> Plan:
    if args.dry_run:
        return Plan(device="cpu", stage2_clips=4, stage2_seconds=2.0, amp_steps=6, amp_width=0.125, amp_clips=8,
                    amp_batch=8, amp_frames=200,
                    bench_train_args=["--width", "0.125", "--clips", "8", "--max-steps", "1", "--warmup", "1",
                                      "--device", "cpu"],
                    bench_scores_args=["--device", "cpu", "--amp", "off", "--clips", "8", "--captions", "40",
                                       "--naive-pairs", "200", "--subset-w1", "1", "--subset-small", "2",
                                       "--index-clips", "100", "--queries", "5"],
                    memory_width=0.125, memory_frames=48, memory_max_batch=64,
                    gpu_test_args=["tests/training/test_gpu_paths.py", "-k", "not kill_and_resume"])  # kill: step 4
    n = args.max_steps
    return Plan(device="cuda", stage2_clips=50, stage2_seconds=30.0, amp_steps=args.amp_steps, amp_width=1.0,
                amp_clips=64, amp_batch=BATCH_SIZE, amp_frames=0,
                bench_train_args=["--full", "--device", "cuda", "--max-steps", str(n)],
                bench_scores_args=["--device", "cuda"],
                memory_width=1.0, memory_frames=FRAMES[1], memory_max_batch=4096,
                gpu_test_args=["-m", "gpu"])


# --------------------------------------------------------------------------------------------
# The steps: each returns a dict with at least "passed"
# --------------------------------------------------------------------------------------------


def run_script(cmd: list[str], timeout: float, **env_vars: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # this checkout's code
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **env_vars}
    return subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def pytest_counts(output: str) -> dict[str, int]:
    """``{'passed': 3, 'skipped': 2, ...}`` from pytest's summary line."""
    tail = output.strip().splitlines()[-1] if output.strip() else ""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail)}


def step_gpu_tests(plan: Plan, work: Path) -> dict:
    proc = run_script(["-m", "pytest", "-q", "-p", "no:cacheprovider", *plan.gpu_test_args], timeout=480,
                      GPU_CHECK_DRY_RUN="1")  # CPU cases resume too (tests/training/test_gpu_paths.py)
    counts = pytest_counts(proc.stdout)
    ok = proc.returncode == 0 and not counts.get("failed") and not counts.get("error")
    if plan.device == "cuda":
        ok = ok and counts.get("passed", 0) > 0  # on a GPU machine the gpu tests must really run
    return {"passed": ok, "returncode": proc.returncode, "counts": counts, "tail": proc.stdout[-1500:]}


def step_stage2(plan: Plan, work: Path) -> dict:
    rows = make_clips(work / "wavs", plan.stage2_clips, plan.stage2_seconds, 44100)
    outs = {}
    for name, device, batched in (("cpu", "cpu", False), ("gpu", plan.device, True)):
        out = work / f"stage2_{name}.hdf5"
        t0 = time.perf_counter()
        extract_split(rows, work / "wavs", out, work / f"skipped_{name}.csv", workers=2, device=device,
                      progress=False, batched=batched)
        outs[name] = (out, time.perf_counter() - t0)
    diff = compare(outs["cpu"][0], outs["gpu"][0])
    return {"passed": diff <= STAGE2_MAX_ABS, "clips": plan.stage2_clips, "seconds_per_clip": plan.stage2_seconds,
            "max_abs_diff": diff, "limit": STAGE2_MAX_ABS, "cpu_s": outs["cpu"][1], "gpu_path_s": outs["gpu"][1],
            "gpu_path_device": plan.device}


def loss_curve(conf: Config, dataset: PairDataset, order: list[list[int]], device: torch.device,
               dtype: torch.dtype | None, frames: int = 0) -> list[float]:
    """Train from seed 0 on the batches ``order`` (lists of pair indices); the loss at every step."""
    torch.manual_seed(0)
    model = build_model(conf, TEXT_DIM, load_prior=False).to(device).train()
    optimizer = build_optimizer(model, conf)
    losses = []
    for idx in order:
        batch = collate_pairs([dataset[i] for i in idx])
        audio = batch.audio[:, :frames] if frames else batch.audio  # (B, T, mels)
        with autocast(device, dtype):
            audio_emb, text_emb = model(audio.to(device), batch.text.to(device))  # (B, E) each
        loss = info_nce(audio_emb.float(), text_emb.float(), batch.clip.to(device), conf.train.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def step_amp_curves(plan: Plan, work: Path) -> dict:
    data_dir = work / "clotho_shaped"
    sizes = Sizes(plan.amp_clips, 2, 2)
    write_synthetic_data(data_dir, sizes)
    conf = Config()
    conf.model.audio_enc.width, conf.model.audio_enc.init = plan.amp_width, "random"
    conf = from_dict(to_dict(conf))
    dataset = PairDataset(load_split_data(data_dir, "development", sizes.development, in_memory=True))
    rng = np.random.default_rng(0)
    order = [rng.choice(len(dataset), plan.amp_batch, replace=False).tolist() for _ in range(plan.amp_steps)]
    device = torch.device(plan.device)
    t0 = time.perf_counter()
    fp32 = loss_curve(conf, dataset, order, device, None, plan.amp_frames)
    bf16 = loss_curve(conf, dataset, order, device, amp_dtype("bf16", device), plan.amp_frames)
    rel = np.abs(np.array(bf16) - np.array(fp32)) / np.maximum(np.abs(fp32), 1e-12)
    finite = bool(np.isfinite(fp32).all() and np.isfinite(bf16).all())
    return {"passed": finite and rel.max() <= AMP_MAX_REL and rel.mean() <= AMP_MEAN_REL, "steps": plan.amp_steps,
            "batch": plan.amp_batch, "frames": plan.amp_frames or "15-30 s clips",
            "width": plan.amp_width, "max_rel_diff": float(rel.max()), "mean_rel_diff": float(rel.mean()),
            "limits": {"max": AMP_MAX_REL, "mean": AMP_MEAN_REL}, "fp32_first_last": [fp32[0], fp32[-1]],
            "bf16_first_last": [bf16[0], bf16[-1]], "fp32": fp32, "bf16": bf16, "seconds": time.perf_counter() - t0}


def step_kill_resume(plan: Plan, work: Path) -> dict:
    test = f"tests/training/test_gpu_paths.py::test_kill_and_resume_on_device[{plan.device}]"
    proc = run_script(["-m", "pytest", "-q", "-p", "no:cacheprovider", test], timeout=300,
                      GPU_CHECK_DRY_RUN="1")  # the CPU case is skipped in `make test` (test_train.py has one)
    counts = pytest_counts(proc.stdout)
    return {"passed": proc.returncode == 0 and counts.get("passed") == 1, "test": test, "counts": counts,
            "tail": proc.stdout[-1500:]}


def wrote_path(output: str) -> Path:
    """The JSON a benchmark script names in its ``wrote <path>`` line."""
    found = re.findall(r"^wrote (\S+\.json)", output, flags=re.M)
    if not found:
        raise RuntimeError(f"the benchmark did not say where it wrote its JSON:\n{output[-1500:]}")
    return Path(found[-1])


def step_bench_train(plan: Plan, work: Path) -> dict:
    proc = run_script(["benchmarks/bench_train.py", *plan.bench_train_args, "--data-dir", str(work / "bench_train")],
                      timeout=420)
    if proc.returncode:
        return {"passed": False, "returncode": proc.returncode, "tail": (proc.stdout + proc.stderr)[-2000:]}
    record = json.loads(wrote_path(proc.stdout).read_text(encoding="utf-8"))
    ratio, ours = record["ratio"]["epoch"], record["ours"]
    minutes_80 = ours["projected_80_epochs_h"] * 60
    out = {"epoch_ratio": ratio, "train_ratio": record["ratio"]["train"], "ours_epoch_s": ours["epoch_s"],
           "baseline_epoch_s": record["baseline"]["epoch_s"], "projected_80_epochs_min": minutes_80,
           "extrapolated": ours["extrapolated"], "command": record["command"], "json": str(wrote_path(proc.stdout)),
           "targets": {"epoch_ratio": TRAIN_RATIO_TARGET, "projected_80_epochs_min": TRAIN_80_EPOCHS_TARGET_MIN}}
    # Targets only bind on a GPU; the dry run checks the plumbing.
    out["passed"] = plan.device != "cuda" or (ratio >= TRAIN_RATIO_TARGET and minutes_80 < TRAIN_80_EPOCHS_TARGET_MIN)
    return out


def step_bench_scores(plan: Plan, work: Path) -> dict:
    out_json = work / "bench_scores.json"
    proc = run_script(["benchmarks/bench_scores.py", *plan.bench_scores_args, "--out", str(out_json)], timeout=420)
    if proc.returncode:
        return {"passed": False, "returncode": proc.returncode, "tail": (proc.stdout + proc.stderr)[-2000:]}
    record = json.loads(out_json.read_text(encoding="utf-8"))
    return {"passed": True, "scoring": record.get("scoring"), "end_to_end": record.get("end_to_end"),
            "search": record.get("search"), "table": record.get("table")}


def train_step_peak(conf: Config, batch: int, frames: int, device: torch.device) -> float | None:
    """Peak GPU memory (MiB) of one bf16 training step at ``batch`` clips of ``frames`` frames; raises
    ``torch.OutOfMemoryError`` when it does not fit. On the CPU (dry run) the step runs and None is returned."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = build_model(conf, TEXT_DIM, load_prior=False).to(device).train()
    optimizer = build_optimizer(model, conf)
    audio = torch.randn(batch, frames, N_MELS, device=device)  # (B, T, mels)
    text = torch.nn.functional.normalize(torch.randn(batch, TEXT_DIM, device=device), dim=1)  # (B, 768)
    try:
        with autocast(device, amp_dtype("bf16", device)):
            audio_emb, text_emb = model(audio, text)
        loss = info_nce(audio_emb.float(), text_emb.float(), torch.arange(batch, device=device), 0.07)
        loss.backward()
        optimizer.step()
        return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    finally:
        del model, optimizer, audio, text


def step_memory(plan: Plan, work: Path) -> dict:
    conf = Config()
    conf.model.audio_enc.width, conf.model.audio_enc.init = plan.memory_width, "random"
    conf = from_dict(to_dict(conf))
    device = torch.device(plan.device)
    peak_32 = train_step_peak(conf, BATCH_SIZE, plan.memory_frames, device)
    fits, batch, oom_at = BATCH_SIZE, BATCH_SIZE * 2, None
    peaks = {BATCH_SIZE: peak_32}
    while batch <= plan.memory_max_batch:
        try:
            peaks[batch] = train_step_peak(conf, batch, plan.memory_frames, device)
            fits, batch = batch, batch * 2
        except torch.OutOfMemoryError:
            oom_at = batch
            break
    if device.type == "cuda":
        torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory / 2**20 if device.type == "cuda" else None
    return {"passed": True, "width": plan.memory_width, "frames": plan.memory_frames, "peak_mib_batch32": peak_32,
            "largest_batch_fits": fits, "first_oom_batch": oom_at, "search_cap": plan.memory_max_batch,
            "peaks_mib": peaks, "gpu_total_mib": total}


STEPS: dict[str, Callable[[Plan, Path], dict]] = {
    "gpu_tests": step_gpu_tests, "stage2": step_stage2, "amp_curves": step_amp_curves,
    "kill_resume": step_kill_resume, "bench_train": step_bench_train, "bench_scores": step_bench_scores,
    "memory": step_memory,
}


# --------------------------------------------------------------------------------------------
# Driver and report
# --------------------------------------------------------------------------------------------


def machine(device: str) -> dict:
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "load_average": os.getloadavg()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_mib"] = torch.cuda.get_device_properties(0).total_memory / 2**20
    return info


def run_step(name: str, plan: Plan, work: Path) -> dict:
    print(f"[gpu_check] {name} ...", flush=True)
    t0 = time.perf_counter()
    try:
        res = STEPS[name](plan, work)
    except Exception as err:  # noqa: BLE001 - one failed step must not hide the others' results
        res = {"passed": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"[gpu_check] {name}: {'pass' if res['passed'] else 'FAIL'} ({res['seconds']} s)", flush=True)
    return res


def fmt(value, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def markdown(record: dict) -> str:
    """The block for BENCHMARKS.md."""
    m, s = record["machine"], record["steps"]
    label = " (DRY RUN on CPU: plumbing only, no GPU figures)" if record["dry_run"] else ""
    head = m.get("gpu") or f"{m['cpu']} (no GPU)"
    lines = [f"### gpu_check on {head}{label}", "",
             f"{record['date']}, commit {record['git_commit']}, torch {m['torch']} (CUDA {m['cuda']}), "
             f"{m['cores']} CPU cores ({m['cpu']}), load {m['load_average'][0]:.1f}; total {record['seconds']:.0f} s.",
             "", "| step | result | figures |", "|---|---|---|"]

    def row(name: str, text: str) -> None:
        r = s.get(name)
        if r is not None:
            status = "pass" if r["passed"] else "**FAIL**"
            lines.append(f"| {name} | {status} | {r['error'] if 'error' in r else text} |")

    r = s.get("gpu_tests", {})
    row("gpu_tests", ", ".join(f"{v} {k}" for k, v in r.get("counts", {}).items()))
    r = s.get("stage2", {})
    row("stage2", f"{r.get('clips')} clips of {r.get('seconds_per_clip')} s: max abs diff {fmt(r.get('max_abs_diff'))} "
                  f"(limit {fmt(r.get('limit'))}); CPU {fmt(r.get('cpu_s'))} s, {r.get('gpu_path_device')} path "
                  f"{fmt(r.get('gpu_path_s'))} s")
    r = s.get("amp_curves", {})
    row("amp_curves", f"{r.get('steps')} steps, width {r.get('width')}: bf16 vs fp32 loss max rel diff "
                      f"{fmt(r.get('max_rel_diff'))}, mean {fmt(r.get('mean_rel_diff'))}; fp32 loss "
                      f"{fmt((r.get('fp32_first_last') or [None])[0])} -> {fmt((r.get('fp32_first_last') or [None])[-1])}")
    r = s.get("kill_resume", {})
    row("kill_resume", f"{r.get('test')}")
    r = s.get("bench_train", {})
    row("bench_train", f"epoch {fmt(r.get('epoch_ratio'))}x faster than the baseline-style loop (target >= "
                       f"{TRAIN_RATIO_TARGET:g}x); ours {fmt(r.get('ours_epoch_s'))} s/epoch, projected 80 epochs "
                       f"{fmt(r.get('projected_80_epochs_min'))} min (target < {TRAIN_80_EPOCHS_TARGET_MIN:g})")
    r = s.get("bench_scores", {})
    scoring = r.get("scoring") or {}
    row("bench_scores", f"scoring speed-up {fmt(scoring.get('speedup'))}x" if "speedup" in scoring
        else "see the JSON's bench_scores.table")
    r = s.get("memory", {})
    peak = r.get("peak_mib_batch32")
    row("memory", f"width {r.get('width')}, {r.get('frames')} frames, bf16: peak "
                  f"{fmt(peak) + ' MiB' if peak is not None else 'n/a (no GPU)'} at batch 32; largest batch that fits {r.get('largest_batch_fits')} (first OOM: "
                  f"{r.get('first_oom_batch')}, search cap {r.get('search_cap')})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes (plumbing check)")
    p.add_argument("--only", nargs="+", choices=list(STEPS), help="run only these steps")
    p.add_argument("--max-steps", type=int, default=20, help="bench_train.py --max-steps (default: 20)")
    p.add_argument("--amp-steps", type=int, default=100, help="training steps of the fp32/bf16 curves (default: 100)")
    p.add_argument("--out", help="JSON path (default: benchmarks/results/gpu_check_<gpu|dry-run>_<time>.json)")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device is visible to torch; run on a GPU machine, or use --dry-run", file=sys.stderr)
        return 2
    plan = make_plan(args)
    t0 = time.perf_counter()
    record = {"benchmark": "gpu_check", "dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "git_commit": git_commit(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": machine(plan.device), "steps": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for name in args.only or STEPS:
            record["steps"][name] = run_step(name, plan, Path(tmp))
    record["seconds"] = time.perf_counter() - t0
    record["passed"] = all(r["passed"] for r in record["steps"].values())
    report = markdown(record)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "dry-run" if args.dry_run else "gpu"
    out = Path(args.out) if args.out else RESULTS / f"gpu_check_{tag}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**record, "markdown": report}, indent=2, default=str) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(report, encoding="utf-8")
    print("\n" + report)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
