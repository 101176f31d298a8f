"""Stage 4: PANNs checkpoint -> CNN14Encoder weights, on synthetic checkpoints with the real PANNs key names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.audio_encoders import CNN14Encoder
from utils.base.errors import DataError
from utils.pretrained.cnn14_transfer import save_cnn14_weights, summary, transfer_panns

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "preprocessing" / "04_cnn14_transfer.py"
WIDTH = 0.125
EXTRACTOR_KEYS = [
    "spectrogram_extractor.stft.conv_real.weight",
    "spectrogram_extractor.stft.conv_imag.weight",
    "logmel_extractor.melW",
]


def _bn(prefix: str, channels: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.rand(channels) + 0.5,
        f"{prefix}.bias": torch.randn(channels),
        f"{prefix}.running_mean": torch.randn(channels),
        f"{prefix}.running_var": torch.rand(channels) + 0.5,
        f"{prefix}.num_batches_tracked": torch.tensor(12345),
    }


def panns_state(width: float = WIDTH, classes: int = 527) -> dict[str, torch.Tensor]:
    """A random PANNs Cnn14 ``model`` state dict, names and shapes as in audioset_tagging_cnn."""
    channels = [max(1, round(c * width)) for c in (64, 128, 256, 512, 1024, 2048)]
    state = {
        "spectrogram_extractor.stft.conv_real.weight": torch.randn(513, 1, 1024),
        "spectrogram_extractor.stft.conv_imag.weight": torch.randn(513, 1, 1024),
        "logmel_extractor.melW": torch.rand(513, 64),
        **_bn("bn0", 64),
    }
    for i, (c_in, c_out) in enumerate(zip([1] + channels[:-1], channels, strict=True), start=1):
        state[f"conv_block{i}.conv1.weight"] = torch.randn(c_out, c_in, 3, 3)
        state[f"conv_block{i}.conv2.weight"] = torch.randn(c_out, c_out, 3, 3)
        state |= _bn(f"conv_block{i}.bn1", c_out) | _bn(f"conv_block{i}.bn2", c_out)
    state["fc1.weight"] = torch.randn(channels[-1], channels[-1])
    state["fc1.bias"] = torch.randn(channels[-1])
    state["fc_audioset.weight"] = torch.randn(classes, channels[-1])
    state["fc_audioset.bias"] = torch.randn(classes)
    return state


def write_checkpoint(path: Path, model: dict | None = None, legacy: bool = False, **extra) -> Path:
    torch.manual_seed(0)
    checkpoint = {"iteration": 660000, "model": panns_state() if model is None else model, **extra}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return write_checkpoint(tmp_path / "Cnn14_mAP=0.431.pth")


def test_every_pretrained_tensor_is_copied(checkpoint, tmp_path):
    source = torch.load(checkpoint, weights_only=True)["model"]
    state, report = transfer_panns(checkpoint, out_dim=16, width=WIDTH)
    out = save_cnn14_weights(state, tmp_path / "weights" / "CNN14_16.pth")

    encoder = CNN14Encoder(out_dim=16, width=WIDTH)
    encoder.load_pretrained(out)
    loaded = encoder.state_dict()
    unused = sorted(["fc_audioset.weight", "fc_audioset.bias", *EXTRACTOR_KEYS])
    assert report.unused == unused
    assert sorted(report.mapped.values()) == sorted(k for k in source if k not in unused)
    assert len(report.mapped) == len(loaded) - 2 == 79
    for key in source:
        if key not in unused:
            assert torch.equal(loaded[key], source[key]), key
    assert report.kept_init == ["fc2.weight", "fc2.bias"]
    assert torch.equal(loaded["fc2.weight"], state["fc2.weight"])
    assert torch.equal(loaded["fc2.bias"], torch.zeros(16))
    assert report.n_values == sum(source[k].numel() for k in report.mapped.values())
    assert report.n_parameters == sum(p.numel() for p in encoder.parameters())


def test_projection_init_is_seeded_and_leaves_global_rng_alone(checkpoint):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first, _ = transfer_panns(checkpoint, out_dim=16, width=WIDTH, seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    second, _ = transfer_panns(checkpoint, out_dim=16, width=WIDTH, seed=7)
    other, _ = transfer_panns(checkpoint, out_dim=16, width=WIDTH, seed=8)
    assert torch.equal(first["fc2.weight"], second["fc2.weight"])
    assert not torch.equal(first["fc2.weight"], other["fc2.weight"])


def test_legacy_format_checkpoint_loads(tmp_path):
    path = write_checkpoint(tmp_path / "legacy.pth", legacy=True)
    state, report = transfer_panns(path, out_dim=16, width=WIDTH)
    assert len(report.mapped) == 79 and state["fc1.weight"].shape == (256, 256)


def test_other_width_names_key_and_shapes(tmp_path):
    path = write_checkpoint(tmp_path / "wide.pth", model=panns_state(width=0.25))
    with pytest.raises(DataError) as err:
        transfer_panns(path, out_dim=16, width=WIDTH)
    message = str(err.value)
    assert "wide.pth" in message
    assert "conv_block1.conv1.weight: checkpoint (16, 1, 3, 3) vs encoder (8, 1, 3, 3)" in message
    assert "width 0.25" in message


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_file_raises_naming_it(tmp_path, legacy):
    path = write_checkpoint(tmp_path / "cut.pth", legacy=legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.pth is corrupt or truncated.*re-download"):
        transfer_panns(path, width=WIDTH)


@pytest.mark.parametrize("content", [b"<!DOCTYPE html><html>Not Found</html>", b"", b"hello world"])
def test_not_a_torch_file_raises(tmp_path, content):
    path = tmp_path / "page.pth"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"page\.pth is corrupt or truncated"):
        transfer_panns(path, width=WIDTH)


def test_python_objects_refused_by_weights_only(tmp_path):
    path = write_checkpoint(tmp_path / "pickled.pth", sampler=np.float64(1.0))
    with pytest.raises(DataError, match=r"pickled\.pth is readable but holds Python objects.*numpy"):
        transfer_panns(path, width=WIDTH)


def test_missing_file_says_where_to_download(tmp_path):
    path = tmp_path / "nowhere" / "Cnn14_mAP=0.431.pth"
    with pytest.raises(DataError) as err:
        transfer_panns(path, width=WIDTH)
    message = str(err.value)
    assert str(path) in message and "not found" in message
    assert "3987831" in message and "Cnn14_mAP=0.431.pth" in message
    assert "conf.pretrained.panns_checkpoint" in message


def test_missing_model_key(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(panns_state(), path)  # a bare state dict, not {"model": ...}
    with pytest.raises(DataError, match=r"bare\.pth has no 'model' state dict"):
        transfer_panns(path, width=WIDTH)


def test_missing_expected_keys_are_listed(tmp_path):
    model = panns_state()
    del model["conv_block3.bn2.running_var"], model["fc1.bias"]
    path = write_checkpoint(tmp_path / "partial.pth", model=model)
    with pytest.raises(DataError, match=r"partial\.pth lacks CNN14 keys: conv_block3\.bn2\.running_var, fc1\.bias"):
        transfer_panns(path, width=WIDTH)


def test_save_is_atomic_and_overwrites(checkpoint, tmp_path):
    state, _ = transfer_panns(checkpoint, out_dim=16, width=WIDTH)
    out = tmp_path / "out" / "w.pth"
    out.parent.mkdir()
    out.write_bytes(b"old")
    save_cnn14_weights(state, out)
    assert [p.name for p in out.parent.iterdir()] == ["w.pth"]  # no temp file left behind
    assert torch.equal(torch.load(out, weights_only=True)["fc1.weight"], state["fc1.weight"])


def test_summary_lists_counts_unused_keys_and_output(checkpoint):
    _, report = transfer_panns(checkpoint, out_dim=16, width=WIDTH)
    text = summary(report, "out/w.pth")
    assert "mapped    79 tensors" in text
    assert "fc_audioset.weight" in text and "logmel_extractor.melW" in text
    assert f"{report.n_parameters:,} parameters" in text
    assert text.endswith("wrote     out/w.pth")


# ---- CNN14Encoder.load_pretrained -------------------------------------------------------------


def test_load_pretrained_missing_file_says_run_stage_4(tmp_path):
    with pytest.raises(DataError, match=r"CNN14_300\.pth not found.*04_cnn14_transfer\.py"):
        CNN14Encoder(out_dim=16, width=WIDTH).load_pretrained(tmp_path / "CNN14_300.pth")


def test_load_pretrained_width_mismatch_lists_keys(checkpoint, tmp_path):
    state, _ = transfer_panns(checkpoint, out_dim=16, width=WIDTH)
    out = save_cnn14_weights(state, tmp_path / "w.pth")
    with pytest.raises(DataError) as err:
        CNN14Encoder(out_dim=16, width=0.25).load_pretrained(out)
    message = str(err.value)
    assert "w.pth does not fit CNN14Encoder(out_dim=16, width=0.25)" in message
    assert "conv_block1.conv1.weight (8, 1, 3, 3) (encoder: (16, 1, 3, 3))" in message
    with pytest.raises(DataError, match=r"fc2\.weight \(16, 256\) \(encoder: \(32, 256\)\)"):
        CNN14Encoder(out_dim=32, width=WIDTH).load_pretrained(out)


def test_load_pretrained_rejects_raw_panns_checkpoint_and_junk(checkpoint, tmp_path):
    with pytest.raises(DataError, match="PANNs training checkpoint.*04_cnn14_transfer"):
        CNN14Encoder(out_dim=16, width=WIDTH).load_pretrained(checkpoint)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match=r"junk\.pth is corrupt or truncated"):
        CNN14Encoder(out_dim=16, width=WIDTH).load_pretrained(junk)


# ---- the real script ----------------------------------------------------------------------------


def _run_script(tmp_path: Path, *sets: str) -> subprocess.CompletedProcess:
    conf = tmp_path / "tiny.yaml"
    conf.write_text("model:\n  audio_enc:\n    out_dim: 16\n  text_enc:\n    out_dim: 16\n", encoding="utf-8")
    args = [sys.executable, str(SCRIPT), "--conf", str(conf), "--set", f"model.audio_enc.width={WIDTH}"]
    for item in sets:
        args += ["--set", item]
    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_script_writes_weights(checkpoint, tmp_path):
    out = tmp_path / "pretrained" / "CNN14_16.pth"
    result = _run_script(tmp_path, f"pretrained.panns_checkpoint={checkpoint}", f"pretrained.cnn14_weights={out}")
    assert result.returncode == 0, result.stderr
    assert "mapped    79 tensors" in result.stdout and str(out) in result.stdout
    assert "fc_audioset.bias" in result.stdout
    encoder = CNN14Encoder(out_dim=16, width=WIDTH)
    encoder.load_pretrained(out)
    source = torch.load(checkpoint, weights_only=True)["model"]
    assert torch.equal(encoder.conv_block4.conv2.weight, source["conv_block4.conv2.weight"])


@pytest.mark.slow
def test_script_missing_checkpoint_exits_2(tmp_path):
    missing = tmp_path / "Cnn14_mAP=0.431.pth"
    result = _run_script(tmp_path, f"pretrained.panns_checkpoint={missing}", "pretrained.cnn14_weights=w.pth")
    assert result.returncode == 2
    assert result.stderr.startswith("error:")
    assert str(missing) in result.stderr and "3987831" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "w.pth").exists()
