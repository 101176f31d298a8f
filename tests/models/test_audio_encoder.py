"""CNN14Encoder: shapes, padding, width, init, determinism, channels_last, freezing, registry."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import ROOT

from models.audio_encoders import AUDIO_ENCODERS, CNN14Encoder, build_audio_encoder, scaled_channels
from models.core import build_model
from models.hf_audio import HFAudioEncoder
from utils.base.config import load_config

WIDTH = 0.125  # channels 8 ... 256: fast on CPU


@pytest.fixture(scope="module")
def encoder() -> CNN14Encoder:
    torch.manual_seed(0)
    return CNN14Encoder(out_dim=24, width=WIDTH).eval()


@pytest.mark.parametrize("frames", [1, 37, 63, 64, 65, 129, 301])
def test_output_shape_for_any_length(encoder, frames):
    with torch.no_grad():
        out = encoder(torch.randn(3, frames, 64))
    assert out.shape == (3, 24)
    assert torch.isfinite(out).all()


def test_short_clips_are_zero_padded_to_64_frames(encoder):
    x = torch.randn(2, 40, 64)
    padded = torch.cat([x, torch.zeros(2, 24, 64)], dim=1)
    with torch.no_grad():
        assert torch.allclose(encoder(x), encoder(padded), atol=1e-6)


def test_output_is_not_normalised(encoder):
    with torch.no_grad():
        norms = encoder(torch.randn(4, 100, 64)).norm(dim=1)
    assert not torch.allclose(norms, torch.ones_like(norms))


def test_wrong_input_shape_raises(encoder):
    with pytest.raises(ValueError, match=r"\(batch, time, 64\).*\(2, 100, 40\)"):
        encoder(torch.randn(2, 100, 40))
    with pytest.raises(ValueError, match="n_mels >= 64"):
        CNN14Encoder(n_mels=32)


def test_width_scales_channels():
    assert scaled_channels(1.0) == [64, 128, 256, 512, 1024, 2048]
    assert scaled_channels(0.125) == [8, 16, 32, 64, 128, 256]
    assert scaled_channels(0.001) == [1, 1, 1, 1, 1, 2]  # at least one channel
    small = CNN14Encoder(out_dim=10, width=0.25)
    assert small.channels == [16, 32, 64, 128, 256, 512]
    assert small.fc1.in_features == small.fc1.out_features == 512
    assert small.fc2.in_features == 512 and small.fc2.out_features == 10


def test_full_width_matches_cnn14_parameter_count():
    with torch.device("meta"):  # shapes only: no memory, no forward
        full = CNN14Encoder(out_dim=300)
    assert full.channels[-1] == 2048
    assert full.conv_block6.conv2.weight.shape == (2048, 2048, 3, 3)
    assert full.fc1.weight.shape == (2048, 2048)
    assert full.fc2.weight.shape == (300, 2048)
    # PANNs Cnn14 has 80,753,615 parameters; drop fc_audioset (2048 -> 527), add fc2 (2048 -> 300).
    expected = 80_753_615 - (2048 * 527 + 527) + (2048 * 300 + 300)
    assert sum(p.numel() for p in full.parameters()) == expected == 80_288_492


def test_panns_submodule_names():
    keys = set(CNN14Encoder(out_dim=8, width=WIDTH).state_dict())
    assert {"bn0.running_mean", "conv_block1.conv1.weight", "conv_block6.bn2.num_batches_tracked",
            "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"} <= keys
    assert all(k.split(".")[0] in {"bn0", "fc1", "fc2"} or k.startswith("conv_block") for k in keys)


def test_init_follows_baseline():
    torch.manual_seed(0)
    enc = CNN14Encoder(out_dim=8, width=WIDTH)
    for bn in [enc.bn0, enc.conv_block3.bn1, enc.conv_block6.bn2]:
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert torch.equal(enc.fc1.bias, torch.zeros_like(enc.fc1.bias))
    assert torch.equal(enc.fc2.bias, torch.zeros_like(enc.fc2.bias))
    weight = enc.conv_block6.conv1.weight  # kaiming normal: std = sqrt(2 / fan_in)
    fan_in = weight.shape[1] * 9
    assert weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)


def test_eval_mode_is_deterministic(encoder):
    x = torch.randn(3, 90, 64)
    with torch.no_grad():
        assert torch.equal(encoder(x), encoder(x))


def test_dropout_flag():
    torch.manual_seed(0)
    with_dropout = CNN14Encoder(out_dim=8, width=WIDTH).train()
    without = CNN14Encoder(out_dim=8, width=WIDTH, dropout=False).train()
    x = torch.randn(4, 80, 64)
    with torch.no_grad():
        assert not torch.allclose(with_dropout(x), with_dropout(x))
        assert torch.allclose(without(x), without(x))
    assert set(with_dropout.state_dict()) == set(without.state_dict())


def test_channels_last_matches_contiguous(encoder):
    nhwc = copy.deepcopy(encoder).to(memory_format=torch.channels_last)
    assert nhwc.conv_block2.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not nhwc.conv_block2.conv1.weight.is_contiguous()
    x = torch.randn(3, 64, 120).transpose(1, 2)  # (batch, time, mels), not contiguous
    with torch.no_grad():
        assert torch.allclose(nhwc(x), encoder(x.contiguous()), atol=1e-5)


def test_set_trainable_false_leaves_only_fc2():
    enc = CNN14Encoder(out_dim=8, width=WIDTH)
    enc.set_trainable(False)
    assert {n for n, p in enc.named_parameters() if p.requires_grad} == {"fc2.weight", "fc2.bias"}
    enc(torch.randn(2, 64, 64)).sum().backward()
    assert enc.conv_block1.conv1.weight.grad is None and enc.fc1.weight.grad is None
    assert enc.fc2.weight.grad is not None
    enc.set_trainable(True)
    assert all(p.requires_grad for p in enc.parameters())


def test_registry():
    assert AUDIO_ENCODERS == {"CNN14Encoder": CNN14Encoder, "HFAudioEncoder": HFAudioEncoder}
    enc = build_audio_encoder("CNN14Encoder", out_dim=12, width=WIDTH)
    assert isinstance(enc, CNN14Encoder) and enc.fc2.out_features == 12
    with pytest.raises(ValueError, match=r"unknown audio encoder 'Cnn10'.*\['CNN14Encoder', 'HFAudioEncoder'\]"):
        build_audio_encoder("Cnn10")


def test_config_dropout_setting_reaches_the_encoder():
    """``model.audio_enc.dropout: false`` (conf_demo.yaml) builds the encoder without dropout."""
    for flag, expected in (("true", {0.2, 0.5}), ("false", {0.0})):
        conf = load_config(ROOT / "conf_demo.yaml", [f"model.audio_enc.dropout={flag}",
                                                     f"model.audio_enc.width={WIDTH}", "model.audio_enc.init=random"])
        model = build_model(conf, text_dim=16, load_prior=False)
        assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == expected
