"""Fault injection and hostile inputs: crafted checkpoints, kills, bad clips, bad settings, damaged files.

Every test here failed on the code before the fix it guards."""

import subprocess
import sys

import torch
from conftest import ROOT, write_config

MAIN = str(ROOT / "main.py")


def run_main(conf_path, *extra, timeout=600):
    return subprocess.run([sys.executable, MAIN, "--conf", str(conf_path), *extra], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a malicious checkpoint would do with os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_refuses_a_checkpoint_that_runs_code(tiny_work, tmp_path):
    run_dir = tmp_path / "runs" / "evil"
    conf_path = write_config(tmp_path / "c.yaml", tiny_work, run_dir, train={"epochs": 1})
    first = run_main(conf_path)
    assert first.returncode == 0, first.stderr[-2000:]
    last = run_dir / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["state"]["epoch"] = 0  # so that the run resumes instead of reporting "already finished"
    marker = tmp_path / "pwned"
    ckpt["extra"] = _Payload(marker)
    torch.save(ckpt, last)

    proc = run_main(conf_path)
    assert not marker.exists(), "resuming ran code from the checkpoint"
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(last) in err[0]
    assert "Python objects other than tensors" in err[0]


def test_no_unsafe_torch_load_in_the_project():
    """Every torch.load in project code, tests and benchmarks uses weights_only=True."""
    offenders = []
    for folder in ["models", "utils", "postprocessing", "preprocessing", "pretrained_models", "benchmarks", "tests"]:
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if "weights_only=" + "False" in text:
                offenders.append(str(path.relative_to(ROOT)))
    for path in ROOT.glob("*.py"):
        if "weights_only=" + "False" in path.read_text():
            offenders.append(path.name)
    assert offenders == []
