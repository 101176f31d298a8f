"""main.py --seeds: one ordinary run per seed, in turn; a rerun continues a sweep."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from builders import free_port
from conftest import ROOT, write_config

from utils.base.config import ConfigError
from utils.cli import call
from utils.training.seeds import parse_seeds


def load_main():
    spec = importlib.util.spec_from_file_location("main_script", ROOT / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAIN = load_main()


def run_main(conf_path, *extra) -> int:
    """main.py in this process (as the command line runs it); returns the exit status."""
    return call(MAIN.main, MAIN.parser, ["--conf", str(conf_path), *extra])


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]


def test_seeds_train_one_run_each_and_a_rerun_continues(tiny_work, tmp_path, capsys):
    conf = write_config(tmp_path / "c.yaml", tiny_work, tmp_path / "runs" / "r",
                        train={"epochs": 1, "max_steps_per_epoch": 2})
    assert run_main(conf, "--seeds", "3,1") == 0
    runs = {k: tmp_path / "runs" / f"r-seed{k}" for k in (3, 1)}
    for k, run_dir in runs.items():
        assert json.loads((run_dir / "run_info.json").read_text())["seed"] == k
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["train"]["seed"] == k and saved["run"]["name"] == f"r-seed{k}"
    assert not (tmp_path / "runs" / "r").exists()
    first = {k: weights(d) for k, d in runs.items()}
    assert any(not torch.equal(first[3][n], first[1][n]) for n in first[3])  # the seeds give other models

    # A sweep killed before its second seed: the rerun skips seed 3 and trains seed 1 again, identically.
    shutil.rmtree(runs[1])
    capsys.readouterr()
    assert run_main(conf, "--seeds", "3,1") == 0
    out = capsys.readouterr().out
    assert "r-seed3 already finished" in out and out.count("done:") == 1
    assert all(torch.equal(first[1][n], weights(runs[1])[n]) for n in first[1])


def test_bad_seed_lists_are_one_line_errors(tmp_path, tiny_work, capsys):
    conf = write_config(tmp_path / "c.yaml", tiny_work, tmp_path / "runs" / "r")
    assert run_main(conf, "--seeds", "0,0") == 2
    assert capsys.readouterr().err.startswith("error: --seeds '0,0'")
    assert run_main(conf, "--seeds", "0,1", "--resume") == 2
    assert not (tmp_path / "runs").exists()


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("7") == [7]
    for bad in ("", "0,0", "a,b", "-1", "1.5"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_seeds_under_torchrun(tiny_work, tmp_path):
    conf = write_config(tmp_path / "c.yaml", tiny_work, tmp_path / "runs" / "d",
                        train={"epochs": 1, "max_steps_per_epoch": 2})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(ROOT / "main.py"), "--conf", str(conf), "--seeds", "0,1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("2 processes") == 2  # one process group, both seeds trained with DDP
    for k in (0, 1):
        lines = (tmp_path / "runs" / f"d-seed{k}" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1]  # written once, by rank 0 only
