"""benchmarks/gpu_check.py's plumbing: its cheapest step in --dry-run, and the refusal without CUDA."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

SCRIPT = str(ROOT / "benchmarks" / "gpu_check.py")


def run_check(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)


def test_dry_run_memory_step_writes_json_and_markdown(tmp_path):
    out = tmp_path / "check.json"
    proc = run_check("--dry-run", "--only", "memory", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["dry_run"] is True and record["passed"] is True and list(record["steps"]) == ["memory"]
    memory = record["steps"]["memory"]
    # The doubling search ran 32 -> 64 (the dry run's cap) without an OOM on the CPU.
    assert memory["largest_batch_fits"] == memory["search_cap"] == 64 and memory["first_oom_batch"] is None
    assert sorted(int(b) for b in memory["peaks_mib"]) == [32, 64]
    block = out.with_suffix(".md").read_text()
    assert "DRY RUN" in block and "| memory | pass |" in block and record["markdown"] == block


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_real_check_refuses_without_cuda(tmp_path):
    proc = run_check("--only", "memory", "--out", str(tmp_path / "x.json"))
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "--dry-run" in proc.stderr
    assert not (tmp_path / "x.json").exists()
