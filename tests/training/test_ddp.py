"""DistributedDataParallel on CPU with the gloo backend, as real multi-process runs."""

import json
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from builders import free_port
from conftest import ROOT, write_config

from utils.training.ddp import Dist, gather_batch
from utils.training.infonce import info_nce


def _global_batch_grad(rank, world, init_file, audio, text, clips, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = torch.nn.Linear(audio.shape[1], text.shape[1])
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    shard = slice(rank * len(audio) // world, (rank + 1) * len(audio) // world)
    d = Dist(rank, world)
    a = torch.nn.functional.normalize(ddp(audio[shard]), dim=1)
    loss = info_nce(gather_batch(a, d), gather_batch(text[shard], d), gather_batch(clips[shard], d), 0.07)
    (loss * world).backward()
    if rank == 0:
        torch.save({"loss": loss.detach(), "grad": net.weight.grad.clone()}, out_dir / "ddp.pt")
    dist.destroy_process_group()


def test_ddp_gradient_equals_single_process_global_batch(tmp_path):
    g = torch.Generator().manual_seed(1)
    audio, text = torch.randn(8, 6, generator=g), torch.nn.functional.normalize(torch.randn(8, 5, generator=g), dim=1)
    clips = torch.tensor([0, 1, 1, 2, 3, 3, 4, 5])  # repeated clips across the two shards
    mp.spawn(_global_batch_grad, args=(2, tmp_path / "init", audio, text, clips, tmp_path), nprocs=2, join=True)
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 5)
    loss = info_nce(torch.nn.functional.normalize(net(audio), dim=1), text, clips, 0.07)
    loss.backward()
    got = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert got["loss"].item() == pytest.approx(loss.item(), abs=1e-5)
    torch.testing.assert_close(got["grad"], net.weight.grad, atol=1e-5, rtol=1e-4)


def test_torchrun_two_processes_gloo(tiny_work, tmp_path):
    run_dir = tmp_path / "runs" / "ddp"
    conf_path = write_config(tmp_path / "c.yaml", tiny_work, run_dir)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(ROOT / "main.py"), "--conf", str(conf_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # written once, by rank 0 only
    # 60 pairs; each rank sees 30 in batches of 8 / 2 = 4 -> 8 steps per epoch, like 60 / 8 on one process.
    assert records[-1]["step"] == 16
    assert "2 processes" in proc.stdout
    assert proc.stdout.count("epoch   1 |") == 1
    assert (run_dir / "checkpoints/best.pt").is_file()
