"""Importing the released DCASE 2023 baseline weights (pretrained_models/import_dcase2023.py).

The baseline's module layout is re-created here from its description (one ``nn.Sequential`` of six conv blocks
of 8 modules, ``fc = Sequential(Dropout, Linear, ReLU, Dropout)``), filled with random weights and random
BatchNorm statistics (with default statistics a swapped bn1/bn2 would go unnoticed), saved in both released
formats, imported, and its embeddings compared with the fixture's own forward.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from builders import load_script
from conftest import TEXT_MODEL, make_work_dir
from torch import nn

from models.audio_encoders import CNN14Encoder
from utils.base.tables import read_text_table
from utils.data.caption_vectors import load_text_embeddings
from utils.evaluation.scoring import read_scores
from utils.runs import load_run
from utils.search.retriever import Retriever

ROOT = Path(__file__).resolve().parents[2]
N_CAPTIONS = 6  # rows of the baseline's frozen SBERT table in the fixture
FRAMES = (64, 64, 96)  # clip lengths (the baseline needs >= 64 frames)


SCRIPT = load_script("pretrained_models/import_dcase2023.py")
SCORES = load_script("postprocessing/01_xmodal_scores.py")
RETRIEVAL = load_script("postprocessing/02_xmodal_retrieval.py")


# --------------------------------------------------------------------------------------------
# The baseline's modules, as its code lays them out
# --------------------------------------------------------------------------------------------


class BaselineCNN14(nn.Module):
    def __init__(self, width: float = 1.0, out_dim: int = 300) -> None:
        super().__init__()
        channels = [round(c * width) for c in (64, 128, 256, 512, 1024, 2048)]
        self.bn0 = nn.BatchNorm2d(64)
        layers: list[nn.Module] = []
        for c_in, c_out in zip([1] + channels[:-1], channels, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.AvgPool2d(kernel_size=2), nn.Dropout(p=0.2)]
        self.cnn = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Dropout(p=0.5), nn.Linear(channels[-1], channels[-1]), nn.ReLU(),
                                nn.Dropout(p=0.5))
        self.fc2 = nn.Linear(channels[-1], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, time, 64)`` -> ``(batch, out_dim)``, as the baseline's CNN14Encoder.forward."""
        x = x.unsqueeze(1).transpose(1, 3)  # (batch, mels, time, 1)
        x = self.bn0(x).transpose(1, 3)  # (batch, 1, time, mels)
        x = self.cnn(x).mean(dim=3)  # (batch, 2048, time / 64)
        x = torch.max(x, dim=2)[0] + torch.mean(x, dim=2)  # (batch, 2048)
        return self.fc2(self.fc(x))


class BaselineText(nn.Module):
    def __init__(self, n_captions: int, text_dim: int = 768, out_dim: int = 300) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_captions, text_dim)
        self.embedding.weight.requires_grad_(False)
        self.fc = nn.Linear(text_dim, out_dim)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Caption indices ``(batch, 1)`` -> ``(batch, out_dim)``, as the baseline's SentBERTBaseEncoder."""
        return self.fc(torch.mean(self.embedding(idx), dim=1))


class BaselineDual(nn.Module):
    def __init__(self, width: float = 1.0, text_dim: int = 768, n_captions: int = N_CAPTIONS) -> None:
        super().__init__()
        self.audio_enc = BaselineCNN14(width)
        self.text_enc = BaselineText(n_captions, text_dim)


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random Kaiming-scaled weights, random biases and random BatchNorm affine parameters and statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (), generator=gen)))
            elif isinstance(m, nn.Embedding):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
    return model.eval()


def shaped_state(width: float = 1.0, text_dim: int = 768) -> dict[str, torch.Tensor]:
    """The baseline's state-dict keys and shapes, every tensor a zero-stride view (a tiny file on disk)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in BaselineDual(width, text_dim).state_dict().items()}
    return {k: torch.zeros((), dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32).expand(s)
            for k, s in shapes.items()}


def save_checkpoint(state: dict[str, torch.Tensor], path: Path) -> Path:
    """The baseline's format: ``(model.state_dict(), optimizer.state_dict())``."""
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(2))], lr=1e-3)
    torch.save((state, optimizer.state_dict()), path)
    return path


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The random baseline, its two files, a tiny work dir with 768-d caption vectors, a config, the import."""
    root = tmp_path_factory.mktemp("dcase2023")
    model = randomise(BaselineDual())
    ckpt = save_checkpoint(model.state_dict(), root / "baseline_checkpoint.pt")
    enc = root / "audio_encoder.pth"
    torch.save(model.audio_enc.state_dict(), enc)
    work = make_work_dir(root / "work", {"evaluation": 4}, dim=768, frames=(64, 72), captions_per_clip=2)
    conf = root / "conf.yaml"
    conf.write_text(yaml.safe_dump({
        "data": {"dataset_dir": str(work), "splits": ["evaluation"], "eval_splits": ["evaluation"]},
        "text": {"model": str(work / TEXT_MODEL)}, "train": {"device": "cpu"}, "eval": {"batch_size": 1}}))  # one clip a batch: no padding
    run_dir = root / "runs" / "dcase2023"
    SCRIPT.run(SCRIPT.main, SCRIPT.parser, ["--conf", str(conf), "--checkpoint", str(ckpt), "--out", str(run_dir)])
    return {"model": model, "ckpt": ckpt, "enc": enc, "work": work, "conf": conf, "run": run_dir, "root": root}


def mels(seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(t, 64)).astype(np.float32) for t in FRAMES]  # [(time, 64)]


@torch.no_grad()
def baseline_audio(model: BaselineDual, clips: list[np.ndarray]) -> np.ndarray:
    """The fixture's own forward, one clip at a time, L2-normalised: ``(n, 300)``."""
    return np.concatenate([F.normalize(model.audio_enc(torch.from_numpy(m)[None]), dim=-1).numpy() for m in clips])


def expect_refusal(capsys, argv: list[str], *needles: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        SCRIPT.run(SCRIPT.main, SCRIPT.parser, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()  # warnings (the fixture's text.model is not the baseline's), then one error line
    assert lines[-1].startswith("error:") and all(line.startswith("warning:") for line in lines[:-1]), err
    err = lines[-1]
    for needle in needles:
        assert needle in err, err
    return err


# --------------------------------------------------------------------------------------------
# The imported run embeds as the baseline does
# --------------------------------------------------------------------------------------------


def test_imported_run_embeds_audio_as_the_baseline(baseline):
    retriever = Retriever.from_run(baseline["run"], device="cpu")
    clips = mels()
    expected = baseline_audio(baseline["model"], clips)  # (3, 300)
    got = retriever.embed_features(clips)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # The clips' embeddings differ by far more than the tolerance (a random CNN maps them close together).
    assert np.abs(expected[0] - expected[1]).max() > 1e-3 and np.abs(expected[0] - expected[2]).max() > 1e-3

    # The comparison would catch a swapped bn1/bn2: their random statistics differ.
    state = retriever.model.audio_enc.state_dict()
    swapped = dict(state)
    for p in ("weight", "bias", "running_mean", "running_var"):
        swapped[f"conv_block3.bn1.{p}"], swapped[f"conv_block3.bn2.{p}"] = state[f"conv_block3.bn2.{p}"], \
            state[f"conv_block3.bn1.{p}"]
    retriever.model.audio_enc.load_state_dict(swapped)
    assert np.abs(retriever.embed_features(clips) - expected).max() > 1e-2


def test_imported_run_embeds_text_as_the_baseline(baseline, monkeypatch):
    model = baseline["model"]
    retriever = Retriever.from_run(baseline["run"], device="cpu")
    vectors = model.text_enc.embedding.weight.numpy()  # (N_CAPTIONS, 768): the "SBERT vectors"
    monkeypatch.setattr(retriever, "text_vectors", lambda texts: vectors[:len(texts)])
    got = retriever.embed_text([f"caption {i}" for i in range(N_CAPTIONS)])
    with torch.no_grad():
        expected = F.normalize(model.text_enc(torch.arange(N_CAPTIONS)[:, None]), dim=-1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_imported_run_is_a_normal_run_directory(baseline):
    run_dir = baseline["run"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "config.yaml", "run_info.json"]
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["best.pt"]
    loaded = load_run(run_dir, "best", "cpu")
    assert loaded.text_dim == 768 and loaded.conf.model.audio_enc.width == 1.0
    assert loaded.conf.run_dir == run_dir
    assert "text_enc.embedding.weight" not in torch.load(run_dir / "checkpoints" / "best.pt",
                                                         weights_only=True)["model"]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["imported_from"]["file"] == str(baseline["ckpt"].resolve())
    assert len(info["imported_from"]["sha256"]) == 64


def test_postprocessing_scores_the_imported_run(baseline):
    run_dir, work, conf = baseline["run"], baseline["work"], str(baseline["conf"])
    SCORES.run(SCORES.main, SCORES.parser, ["--conf", conf, "--run", str(run_dir)])
    RETRIEVAL.run(RETRIEVAL.main, RETRIEVAL.parser, ["--conf", conf, "--run", str(run_dir)])
    sf = read_scores(run_dir / "eval" / "evaluation_xmodal_scores.hdf5")
    rows = read_text_table(work / "evaluation_text.csv")
    vectors = load_text_embeddings(work / "sbert_embeds.hdf5", "evaluation", rows)  # (8, 768)
    with h5py.File(work / "evaluation_audio_logmels.hdf5", "r") as h5:
        clips = [h5[fid][()] for fid in sf.audio_ids]
    model = baseline["model"]
    with torch.no_grad():
        text = F.normalize(model.text_enc.fc(torch.from_numpy(np.asarray(vectors, np.float32))), dim=-1).numpy()
    expected = text @ baseline_audio(model, clips).T  # (8 captions, 4 clips)
    assert sf.scores.shape == (8, 4)
    np.testing.assert_allclose(sf.scores, expected, atol=1e-5, rtol=0)
    metrics = json.loads((run_dir / "eval" / "evaluation_metrics.json").read_text())
    assert 0 < metrics["t2a"]["mAP@10"] <= 1


# --------------------------------------------------------------------------------------------
# --audio-encoder
# --------------------------------------------------------------------------------------------


def test_audio_encoder_file_loads_as_cnn14_weights(baseline, capsys):
    out = baseline["root"] / "CNN14_baseline.pth"
    SCRIPT.run(SCRIPT.main, SCRIPT.parser, ["--conf", str(baseline["conf"]), "--audio-encoder",
                                            str(baseline["enc"]), "--out", str(out)])
    assert f"warning: text.model is '{baseline['work'] / TEXT_MODEL}'" in capsys.readouterr().err  # not the baseline's SBERT model
    encoder = CNN14Encoder(out_dim=300, width=1.0)
    encoder.load_pretrained(out)
    clips = mels(2)
    with torch.no_grad():
        got = np.concatenate([F.normalize(encoder.eval()(torch.from_numpy(m)[None]), dim=-1).numpy() for m in clips])
    np.testing.assert_allclose(got, baseline_audio(baseline["model"], clips), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# Refusals: one `error:` line naming the problem, exit 2, nothing written
# --------------------------------------------------------------------------------------------


def test_refuses_a_shape_naming_the_key(baseline, tmp_path, capsys):
    state = shaped_state(text_dim=384)  # a projection of 384-d (MiniLM) vectors
    ckpt = save_checkpoint(state, tmp_path / "c.pt")
    expect_refusal(capsys, ["--conf", str(baseline["conf"]), "--checkpoint", str(ckpt), "--out",
                            str(tmp_path / "run")], "text_enc.fc.weight", "(300, 384)")
    assert not (tmp_path / "run").exists()
    state = shaped_state()
    state["audio_enc.cnn.28.running_var"] = torch.zeros(1).expand(256)  # block 4 (bn2 at 8*3+4) has 512
    ckpt = save_checkpoint(state, tmp_path / "c.pt")
    expect_refusal(capsys, ["--conf", str(baseline["conf"]), "--checkpoint", str(ckpt), "--out",
                            str(tmp_path / "run")], "audio_enc.cnn.28.running_var", "conv_block4.bn2.running_var")


def test_refuses_another_width(baseline, tmp_path, capsys):
    ckpt = save_checkpoint(shaped_state(width=0.5), tmp_path / "c.pt")
    expect_refusal(capsys, ["--conf", str(baseline["conf"]), "--checkpoint", str(ckpt), "--out",
                            str(tmp_path / "run")], "audio_enc.cnn.0.weight", "width 1.0")
    enc = tmp_path / "enc.pth"
    torch.save({k.removeprefix("audio_enc."): v for k, v in shaped_state(width=0.5).items()
                if k.startswith("audio_enc.")}, enc)
    expect_refusal(capsys, ["--conf", str(baseline["conf"]), "--audio-encoder", str(enc), "--out",
                            str(tmp_path / "w.pth")], "cnn.0.weight", "width 1.0")
    assert not (tmp_path / "w.pth").exists()
    expect_refusal(capsys, ["--conf", str(baseline["conf"]), "--set", "model.audio_enc.width=0.5", "--checkpoint",
                            str(baseline["ckpt"]), "--out", str(tmp_path / "run")], "model.audio_enc.width")


def test_refuses_missing_keys(baseline, tmp_path, capsys):
    state = shaped_state()
    del state["audio_enc.cnn.12.running_var"], state["text_enc.fc.bias"]
    ckpt = save_checkpoint(state, tmp_path / "c.pt")
    expect_refusal(capsys, ["--conf", str(baseline["conf"]), "--checkpoint", str(ckpt), "--out",
                            str(tmp_path / "run")], "lacks keys", "audio_enc.cnn.12.running_var", "text_enc.fc.bias")


def test_refuses_files_of_neither_format(baseline, tmp_path, capsys):
    conf = ["--conf", str(baseline["conf"])]
    other = tmp_path / "other.pt"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, other)
    expect_refusal(capsys, conf + ["--checkpoint", str(other), "--out", str(tmp_path / "run")], "other.pt",
                   "neither")
    text = tmp_path / "notes.txt"
    text.write_text("not a torch file")
    expect_refusal(capsys, conf + ["--audio-encoder", str(text), "--out", str(tmp_path / "w.pth")], "notes.txt")
    expect_refusal(capsys, conf + ["--checkpoint", str(baseline["enc"]), "--out", str(tmp_path / "run")],
                   "--audio-encoder")
    expect_refusal(capsys, conf + ["--audio-encoder", str(baseline["ckpt"]), "--out", str(tmp_path / "w.pth")],
                   "--checkpoint")
    expect_refusal(capsys, conf + ["--checkpoint", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "run")],
                   "absent.pt", "Zenodo")
    assert not (tmp_path / "run").exists() and not (tmp_path / "w.pth").exists()


def test_refuses_code_in_the_file(baseline, tmp_path, capsys):
    """Loaded with weights_only=True: a pickle that would call a function is refused, not run."""
    evil = tmp_path / "evil.pt"
    torch.save((shaped_state(), {"hook": print}), evil)
    expect_refusal(capsys, ["--conf", str(baseline["conf"]), "--checkpoint", str(evil), "--out",
                            str(tmp_path / "run")], "evil.pt", "weights_only")


def test_refuses_to_overwrite_a_run(baseline, capsys):
    expect_refusal(capsys, ["--conf", str(baseline["conf"]), "--checkpoint", str(baseline["ckpt"]), "--out",
                            str(baseline["run"])], "not empty")
