"""Every GPU code path of training, run for 2 steps on whatever devices exist (CPU always, CUDA when present):
bf16 / fp16 autocast (fp16 with its GradScaler, saved and restored on resume), channels-last, torch.compile,
DataLoader workers with one persistent HDF5 handle each, in-memory features, and 2-process DDP with AMP.
The same tests run unchanged on CUDA (``pytest -m gpu``; see tests/devices.py).

Cheap on purpose (``make test`` runs on 2 cores): plain resume is tests/training/test_train.py's, so only fp16 (the one
branch with extra state to restore) resumes here on the CPU; every branch resumes on CUDA and under
``benchmarks/gpu_check.py --dry-run`` (``GPU_CHECK_DRY_RUN=1``), as does the DDP run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from builders import free_port
from conftest import ROOT, make_work_dir, write_config
from devices import (
    DEVICES,
    HAS_CUDA,
    assert_close_rel,
    assert_finite_float32,
    compiler_missing,
    fp16_unsupported,
)
from torch.utils.data import DataLoader, Dataset

import utils.training.loop as tu
import utils.training.setup as ts
from models.core import build_model
from utils.base.config import ConfigError, load_config
from utils.base.devices import amp_dtype, autocast, use_channels_last
from utils.data.datasets import LogmelStore, PairDataset, collate_pairs, load_split
from utils.training.infonce import info_nce

STEPS = 2  # optimizer steps per epoch in these runs
SMALL_MODEL = {"audio_enc": {"width": 0.0625, "init": "random"}}  # CNN14 at 1/16 width: 4 to 128 channels
FULL_CPU = bool(os.environ.get("GPU_CHECK_DRY_RUN"))  # gpu_check --dry-run: the CPU cases resume too

# Each branch: the train.* settings that switch it on.
BRANCHES = {
    "bf16": {"amp": "bf16"},
    "fp16": {"amp": "fp16"},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "workers": {"num_workers": 2},
    "in_memory": {"in_memory": True},
}


@pytest.fixture
def tiny_work(tmp_path):
    """Smaller than conftest's: 8 + 4 short clips, so each branch's run takes a few seconds."""
    return make_work_dir(tmp_path / "work", {"development": 8, "validation": 4}, frames=(40, 64))


def _skip_reason(branch: str, device: str) -> str | None:
    if branch == "fp16":
        return fp16_unsupported(device)
    if branch == "compile":
        return compiler_missing()
    return None


def _resumes(branch: str, device: str) -> bool:
    """Whether the test also resumes ``branch`` (see the module docstring)."""
    return device != "cpu" or FULL_CPU or branch == "fp16"


def _config(tiny_work, tmp_path, device: str, name: str, epochs: int, **train):
    settings = {"epochs": epochs, "batch_size": 8, "max_steps_per_epoch": STEPS, "num_workers": 0,
                "eval_batch_size": 16, "log_every": 1, "device": device, "amp": "off",
                "channels_last": False, "early_stop": {"enabled": False}, **train}  # each branch alone
    return load_config(write_config(tmp_path / f"{name}.yaml", tiny_work, tmp_path / "runs" / name, train=settings,
                                    model=SMALL_MODEL))


class _Recorder:
    """Wraps the pieces of training (``utils.training.loop``, ``utils.training.setup``) that a branch changes, and records what they saw."""

    def __init__(self, monkeypatch, device: str):
        self.losses: list[torch.Tensor] = []
        self.models: list = []
        self.encoder_dtypes: list[torch.dtype] = []  # training steps
        self.eval_dtypes: list[torch.dtype] = []  # validation (float32 unless eval.amp)
        self.compiled = 0
        self.handle_opens = 0
        real_loss, real_build, real_compile, real_file = tu.info_nce, ts.build_model, torch.compile, LogmelStore._file

        def loss(*args, **kwargs):
            out = real_loss(*args, **kwargs)
            self.losses.append(out.detach())
            return out

        def build(*args, **kwargs):
            model = real_build(*args, **kwargs)
            model.audio_enc.register_forward_hook(
                lambda m, i, o: (self.encoder_dtypes if m.training else self.eval_dtypes).append(o.dtype))
            self.models.append(model)
            return model

        def compile_(*args, **kwargs):
            self.compiled += 1
            if device == "cpu":  # Dynamo's tracing as on CUDA, without minutes of inductor C++ builds on 2 cores
                kwargs["backend"] = "eager"
            return real_compile(*args, **kwargs)

        def file_(store):
            if store._h5 is None or store._pid != os.getpid():
                self.handle_opens += 1
            return real_file(store)

        monkeypatch.setattr(tu, "info_nce", loss)
        monkeypatch.setattr(ts, "build_model", build)
        monkeypatch.setattr(torch, "compile", compile_)
        monkeypatch.setattr(LogmelStore, "_file", file_)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("branch", list(BRANCHES))
def test_branch_trains_resumes_and_checkpoints(branch, device, tiny_work, tmp_path, monkeypatch, capsys):
    if reason := _skip_reason(branch, device):
        pytest.skip(reason)
    rec = _Recorder(monkeypatch, device)
    conf = _config(tiny_work, tmp_path, device, branch, epochs=1, **BRANCHES[branch])
    state = tu.train(conf)
    assert state.epoch == 1 and state.step == STEPS
    train_losses = rec.losses[:STEPS]
    assert_finite_float32(train_losses, "training loss")  # similarities and loss stay float32 under AMP
    assert_finite_float32([state.history[0]["train_loss"], state.history[0]["val_loss"]], "epoch loss")

    model = rec.models[0]
    want = amp_dtype(BRANCHES[branch].get("amp", "off"), torch.device(device)) or torch.float32
    assert set(rec.encoder_dtypes) == {want}, f"the audio encoder ran in {set(rec.encoder_dtypes)}, not {want}"
    assert set(rec.eval_dtypes) == {torch.float32}, "validation scores in float32 whatever train.amp (eval.amp=off)"
    nhwc = model.audio_enc.conv_block2.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc == (branch == "channels_last")
    assert rec.compiled == (1 if branch == "compile" else 0)
    if branch == "in_memory":
        assert rec.handle_opens == 0, "in_memory training should never open the HDF5 files"
    elif branch != "workers":  # workers open theirs in child processes (see the test below)
        assert rec.handle_opens == 2, "one persistent handle per split in the main process"

    last = conf.run_dir / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["state"]["step"] == STEPS
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())
    assert ckpt["model"].keys() == model.state_dict().keys(), "saved from the plain model, not the compiled one"
    if branch == "fp16":
        assert ckpt["scaler"]["scale"] > 0, "fp16 trains with an enabled GradScaler, saved for resume"
    else:
        assert ckpt["scaler"] == {}, "the GradScaler is only enabled for fp16"
    best = torch.load(conf.run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 1

    if not _resumes(branch, device):
        return
    # Resume with the same branch switched on: one more epoch, continuing the step count.
    conf.train.epochs = 2
    capsys.readouterr()
    resumed = tu.train(conf)
    assert "resuming" in capsys.readouterr().out
    assert resumed.epoch == 2 and resumed.step == 2 * STEPS and len(resumed.history) == 2
    assert_finite_float32(rec.losses, "loss")
    after = torch.load(last, weights_only=True)
    assert after["state"]["step"] == 2 * STEPS
    assert any(not torch.equal(after["model"][k], ckpt["model"][k]) for k in ckpt["model"])
    lines = (conf.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


AMP_TOLERANCE = {"bf16": 3e-2, "fp16": 5e-3}  # relative, on the InfoNCE loss of one batch
EMBEDDING_TOLERANCE = {"bf16": 5e-2, "fp16": 1e-2}  # L2 distance of a clip's unit vector from its fp32 vector


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp", list(AMP_TOLERANCE))
def test_amp_loss_matches_fp32_on_the_same_batch(amp, device, tiny_work, tmp_path):
    if amp == "fp16" and (reason := fp16_unsupported(device)):
        pytest.skip(reason)
    conf = _config(tiny_work, tmp_path, device, "amp", epochs=1)
    data = load_split(conf, "development")
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(conf, data.text_embeds.shape[1], load_prior=False).to(dev).eval()  # eval: no dropout
    with torch.no_grad():  # BatchNorm statistics that make clips' vectors differ (untrained, they nearly agree)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    pairs = PairDataset(data)
    first_caption = [int(np.flatnonzero(data.text_to_audio == c)[0]) for c in range(len(data.fids))]
    batch = collate_pairs([pairs[i] for i in first_caption])  # one caption of every clip
    audio, text, clip = batch.audio.to(dev), batch.text.to(dev), batch.clip.to(dev)
    losses, embs = {}, {}
    for spec in ("off", amp):
        dtype = amp_dtype(spec, dev)
        with torch.no_grad(), autocast(dev, dtype):
            audio_emb, text_emb = model(audio, text)
            assert model.audio_enc(audio).dtype == (dtype or torch.float32)  # the CNN really ran in `spec`
        losses[spec] = info_nce(audio_emb.float(), text_emb.float(), clip, conf.train.temperature)
        embs[spec] = audio_emb.float().cpu()  # (n_clips, E) unit vectors
    assert amp_dtype(amp, dev) in (torch.bfloat16, torch.float16)
    assert_finite_float32(list(losses.values()))
    assert_close_rel(float(losses[amp]), float(losses["off"]), AMP_TOLERANCE[amp], f"{amp} vs fp32 loss")

    def gap(a: torch.Tensor) -> float:  # the largest distance between a clip's vector and its fp32 vector
        return float((a - embs["off"]).norm(dim=1).max())

    constant = torch.nn.functional.normalize(embs["off"].mean(0, keepdim=True), dim=1).expand_as(embs["off"])
    assert gap(embs[amp]) < EMBEDDING_TOLERANCE[amp], f"{amp} audio vectors differ from fp32 by {gap(embs[amp])}"
    # The tolerance is tight enough to see a broken path: one constant vector, or the clips' vectors shuffled.
    assert gap(constant) > EMBEDDING_TOLERANCE[amp] and gap(embs["off"].roll(1, 0)) > EMBEDDING_TOLERANCE[amp]


def test_explicit_settings_apply_on_cpu_and_auto_keeps_cpu_plain():
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cpu) is None
    assert amp_dtype("bf16", cpu) == torch.bfloat16 and amp_dtype("fp16", cpu) == torch.float16
    assert not use_channels_last("auto", cpu) and use_channels_last(True, cpu) and not use_channels_last(False, cpu)
    if HAS_CUDA:
        assert use_channels_last("auto", torch.device("cuda")) and amp_dtype("auto", torch.device("cuda"))


@pytest.mark.parametrize(("text", "value"), [("auto", "auto"), ("true", True), ("false", False)])
def test_channels_last_setting_reads_auto_true_false(text, value):
    conf = load_config(ROOT / "conf.yaml", [f"train.channels_last={text}"])
    assert conf.train.channels_last == value and type(conf.train.channels_last) is type(value)


def test_bad_channels_last_setting_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"train\.channels_last") as err:
        load_config(ROOT / "conf.yaml", ["train.channels_last=sometimes"])
    assert "\n" not in str(err.value)


class _HandleProbe(Dataset):
    """Each item: (worker pid, id of that process's HDF5 handle, frames read, first value)."""

    def __init__(self, dataset: PairDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        audio = self.dataset[i][0]
        return os.getpid(), id(self.dataset.data.features._h5), audio.shape[0], float(audio[0, 0])


def test_workers_keep_one_hdf5_handle_each(tiny_work, tmp_path):
    conf = _config(tiny_work, tmp_path, "cpu", "workers", epochs=1)
    data = load_split(conf, "development")
    probe = _HandleProbe(PairDataset(data))
    loader = DataLoader(probe, batch_size=4, num_workers=2, collate_fn=list, persistent_workers=True)
    items = [item for _ in range(2) for batch in loader for item in batch]  # two epochs, same workers
    handles: dict[int, set[int]] = {}
    for pid, handle, _, _ in items:
        handles.setdefault(pid, set()).add(handle)
    assert len(handles) == 2 and os.getpid() not in handles, "items come from the 2 worker processes"
    assert all(len(h) == 1 for h in handles.values()), f"a worker re-opened its file: {handles}"
    for k, (_, _, frames, first) in enumerate(items[: len(probe)]):
        fid = data.fids[data.text_to_audio[k]]
        assert frames == data.features.n_frames(fid)
        assert first == pytest.approx(float(np.asarray(data.features[fid])[0, 0]))
    assert data.features._h5 is not None and data.features._pid == os.getpid()  # the parent's own handle


def _torchrun(conf_path):

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(ROOT / "main.py"), "--conf", str(conf_path)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.parametrize("device", [
    pytest.param("cpu", id="cpu-gloo"),
    pytest.param("cuda", id="cuda-nccl", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not HAS_CUDA or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")]),
])
def test_ddp_two_processes_with_amp_and_resume(device, tiny_work, tmp_path):
    run_dir = tmp_path / "runs" / "ddp_amp"
    train = {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2, "num_workers": 0, "eval_batch_size": 16,
             "log_every": 1, "device": device, "amp": "bf16", "early_stop": {"enabled": False}}
    proc = _torchrun(write_config(tmp_path / "c.yaml", tiny_work, run_dir, train=train, model=SMALL_MODEL))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stdout and "amp=torch.bfloat16" in proc.stdout
    first = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert first["state"]["step"] == 2 and first["config"]["train"]["amp"] == "bf16"
    if not _resumes("ddp", device):
        return

    proc = _torchrun(write_config(tmp_path / "c.yaml", tiny_work, run_dir, train={**train, "epochs": 2},
                                  model=SMALL_MODEL))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("resuming") == 1  # rank 0 only
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["step"] == 4
    assert_finite_float32([v for r in records for v in (r["train_loss"], r["val_loss"])], "DDP loss")
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["config"]["train"]["amp"] == "bf16" and last["state"]["step"] == 4


@pytest.mark.parametrize("device", [
    pytest.param("cpu", id="cpu", marks=pytest.mark.skipif(
        not os.environ.get("GPU_CHECK_DRY_RUN"), reason="CPU kill + resume is tests/training/test_train.py's; "
        "this case runs under benchmarks/gpu_check.py --dry-run")),
    *DEVICES[1:],
])
def test_kill_and_resume_on_device(device, tiny_work, tmp_path):
    """SIGKILL mid-run, then rerun: training continues after the last checkpointed epoch."""
    run_dir = tmp_path / "runs" / "killed"
    train = {"epochs": 3, "batch_size": 8, "max_steps_per_epoch": STEPS, "num_workers": 0, "eval_batch_size": 16,
             "log_every": 1, "device": device, "early_stop": {"enabled": False}}
    conf_path = write_config(tmp_path / "k.yaml", tiny_work, run_dir, train=train)
    cmd = [sys.executable, str(ROOT / "main.py"), "--conf", str(conf_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (metrics.is_file() and metrics.read_text()):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(metrics.read_text().splitlines())
    assert 1 <= done < 3, f"the kill should land mid-run (after {done} epochs)"

    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"after epoch {done}" in resumed.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[-1]["step"] == 3 * STEPS
    assert_finite_float32([v for r in records for v in (r["train_loss"], r["val_loss"])], "loss")
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["state"]["epoch"] == 3
