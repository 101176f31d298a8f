"""benchmarks/gpu_check.py's argument plumbing. Its --dry-run takes minutes, so it is run by hand, not here
(even its cheapest step, ``--dry-run --only memory``, takes over 20 s on 2 cores)."""

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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_real_check_refuses_without_cuda(tmp_path):
    proc = run_check("--only", "memory", "--out", str(tmp_path / "x.json"))
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "--dry-run" in proc.stderr
    assert not (tmp_path / "x.json").exists()
