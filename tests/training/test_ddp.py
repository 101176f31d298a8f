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

from models.core import build_model
from utils.base.config import load_config
from utils.training.ddp import Dist, gather_batch
from utils.training.infonce import info_nce
from utils.training.loop import validate
from utils.training.setup import load_training_data


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


def _model_with_rank_statistics(conf, text_dim: int, rank: int):
    """The same weights on every rank, BatchNorm statistics that differ by rank (as after each rank's last batch)."""
    torch.manual_seed(0)
    model = build_model(conf, text_dim, load_prior=False)
    gen = torch.Generator().manual_seed(100 + rank)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


def _validate_rank(rank, world, init_file, conf_path, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    conf = load_config(conf_path)
    data = load_training_data(conf)
    model = _model_with_rank_statistics(conf, data.text_dim, rank)
    val = validate(model, data.val, conf, torch.device("cpu"), None, Dist(rank, world))
    torch.save({"val": val, "rank": rank}, out_dir / f"val{rank}.pt")
    dist.destroy_process_group()


def test_ddp_validation_uses_rank0_batchnorm_statistics(tiny_work, tmp_path):
    """Two ranks whose BatchNorm statistics differ validate exactly as one process with rank 0's (the saved
    ones): each rank embeds half the clips, so a rank using its own statistics would move half the vectors."""
    conf_path = write_config(tmp_path / "c.yaml", tiny_work, tmp_path / "runs" / "v")
    mp.spawn(_validate_rank, args=(2, tmp_path / "init", conf_path, tmp_path), nprocs=2, join=True)
    conf = load_config(conf_path)
    data = load_training_data(conf)
    alone = validate(_model_with_rank_statistics(conf, data.text_dim, 0), data.val, conf, torch.device("cpu"),
                     None, Dist())
    other = validate(_model_with_rank_statistics(conf, data.text_dim, 1), data.val, conf, torch.device("cpu"),
                     None, Dist())
    assert abs(other["val_loss"] - alone["val_loss"]) > 1e-4  # the statistics matter to the result
    for rank in (0, 1):
        got = torch.load(tmp_path / f"val{rank}.pt", weights_only=True)["val"]
        assert got["val_loss"] == pytest.approx(alone["val_loss"], abs=1e-6)
        assert got["val_t2a"] == pytest.approx(alone["val_t2a"], abs=1e-6)


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

    # Every rank's RNG state is saved and restored: 1 epoch, then a resume to 2, gives the same weights as
    # 2 epochs straight (dropout draws its masks on both ranks).
    last = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert len(last["rng_ranks"]) == 2
    assert not torch.equal(last["rng_ranks"][0]["torch"], last["rng_ranks"][1]["torch"])
    cut_dir = tmp_path / "runs" / "cut"
    for epochs in (1, 2):
        conf_cut = write_config(tmp_path / f"cut{epochs}.yaml", tiny_work, cut_dir,
                                train={"epochs": epochs, "batch_size": 8, "num_workers": 0, "eval_batch_size": 16,
                                       "log_every": 2, "device": "cpu", "early_stop": {"enabled": False}})
        cmd[-1] = str(conf_cut)
        cmd[4] = f"--master_port={free_port()}"
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stdout
    resumed = torch.load(cut_dir / "checkpoints/last.pt", weights_only=True)["model"]
    for key, value in last["model"].items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6)
