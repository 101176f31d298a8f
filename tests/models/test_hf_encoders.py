"""HFTextEncoder and HFAudioEncoder on tiny random models saved with save_pretrained and loaded by path:
pooling against an independent computation, padding never changes a clip or caption, window averaging of long
clips, the worker-side feature extraction, learning rates and errors."""

import numpy as np
import pytest
import torch
from conftest import write_config
from hf_models import tiny_ast, tiny_bert, tiny_clap_audio, tone

from models.core import build_model
from models.hf_audio import HFAudioEncoder, window_starts
from models.text_encoders import HFTextEncoder, normalize_caption
from utils.base.config import ConfigError, load_config
from utils.base.errors import DataError
from utils.data.datasets import PairCollate
from utils.training.setup import build_optimizer


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"bert": tiny_bert(root / "bert"), "ast": tiny_ast(root / "ast"), "clap": tiny_clap_audio(root / "clap")}


def test_normalize_caption_as_d25_t6():
    assert normalize_caption("A Dog, barking!  Loudly... (far-away)") == "a dog barking loudly far away"


def test_text_pooling_matches_the_model_and_ignores_padding(hf):
    from transformers import AutoModel, AutoTokenizer

    body, tok = AutoModel.from_pretrained(hf["bert"]).eval(), AutoTokenizer.from_pretrained(hf["bert"])
    short, long = "a dog barks", "the rain falls while a bell rings and a dog barks fast"
    for pooling in ("cls", "mean"):
        enc = HFTextEncoder(str(hf["bert"]), out_dim=6, pooling=pooling).eval()
        with torch.no_grad():
            both = enc([short, long])
            t = tok([short], return_tensors="pt")
            hidden = body(**t).last_hidden_state[0]  # (tokens, H), unpadded
            pooled = hidden[0] if pooling == "cls" else hidden.mean(0)
            torch.testing.assert_close(both[0], enc.fc(pooled), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(both[0], enc([short])[0], atol=1e-5, rtol=1e-5)
    norm = HFTextEncoder(str(hf["bert"]), out_dim=6, normalize_captions=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(norm(["A Dog, barks!"]), norm(["a dog barks"]))
        plain = HFTextEncoder(str(hf["bert"]), out_dim=6).eval()
        plain.fc.load_state_dict(norm.fc.state_dict())
        assert not torch.allclose(plain(["A Dog, barks!"]), plain(["a dog barks"]))  # [UNK]s without it
    capped = HFTextEncoder(str(hf["bert"]), out_dim=6, max_seq_length=5)
    assert capped.tokenize([long])["input_ids"].shape[1] == 5


def conf_with(tmp_path, hf, text=None, audio=None, train=None):
    model = {"text_enc": {"name": "HFTextEncoder", "pretrained": str(hf["bert"]), "out_dim": 8, **(text or {})},
             "audio_enc": {"out_dim": 8, "width": 0.125, "init": "random", **(audio or {})}}
    features = {"kind": "waveform"} if (audio or {}).get("name") == "HFAudioEncoder" else {}
    path = write_config(tmp_path / "c.yaml", tmp_path, tmp_path / "runs" / "r", model=model, features=features,
                        train={"lr": 1e-3, **(train or {})})
    return load_config(path)


def test_finetune_lrs_and_freezing(tmp_path, hf):
    conf = conf_with(tmp_path, hf, text={"finetune_lr": 2e-5},
                     audio={"name": "HFAudioEncoder", "pretrained": str(hf["ast"]), "finetune_lr": 5e-5})
    model = build_model(conf, load_prior=False)
    groups = build_optimizer(model, conf).param_groups
    body = {id(p) for p in model.text_enc.body.parameters()}
    audio_body = {id(p) for p in model.audio_enc.body.parameters()}
    assert [g["lr"] for g in groups] == [1e-3, 2e-5, 5e-5]
    assert {id(p) for p in groups[1]["params"]} == body and {id(p) for p in groups[2]["params"]} == audio_body
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in [*model.text_enc.fc.parameters(),
                                                                     *model.audio_enc.fc.parameters()]}
    frozen = conf_with(tmp_path, hf, text={"trainable": False})
    model = build_model(frozen, load_prior=False)
    groups = build_optimizer(model, frozen).param_groups
    assert len(groups) == 1 and not any(p.requires_grad for p in model.text_enc.body.parameters())
    model.train()
    assert not model.text_enc.body.training and model.text_enc.fc.training  # no dropout in the frozen body


def test_window_starts():
    assert window_starts(100, 0) == [0] and window_starts(100, 100) == [0]
    assert window_starts(250, 100) == [0, 100, 150]  # the last window ends at the clip's end


@pytest.mark.parametrize("name", ["ast", "clap"])
def test_long_clips_are_the_mean_of_their_windows_and_padding_never_counts(hf, name):
    enc = HFAudioEncoder(str(hf[name]), out_dim=8).eval()
    long, short = tone(3.1, 440), tone(0.6, 880, seed=1)
    w = enc.window
    assert w == (20480 if name == "ast" else 16000) and len(long) > 2 * w
    x = torch.zeros(2, len(long), 1)
    x[0, :, 0], x[1, :len(short), 0] = torch.from_numpy(long), torch.from_numpy(short)
    with torch.no_grad():
        both = enc(x, torch.tensor([len(long), len(short)]))
        # Independently: each window of the long clip alone, averaged; the short clip alone, unpadded.
        starts = [0, w, len(long) - w] if len(long) < 3 * w else [0, w, 2 * w, len(long) - w]
        windows = torch.stack([enc(torch.from_numpy(long[s:s + w]).view(1, -1, 1))[0] for s in starts])
        torch.testing.assert_close(both[0], windows.mean(0), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(both[1], enc(torch.from_numpy(short).view(1, -1, 1))[0], atol=1e-5, rtol=1e-4)
        assert not torch.allclose(windows[0], windows[-1], atol=1e-3)  # the windows differ: the mean matters
        # The DataLoader workers' path (PairCollate with the encoder's extractor) gives the same embeddings.
        items = [(torch.from_numpy(long).view(-1, 1), torch.zeros(3), 0, 0),
                 (torch.from_numpy(short).view(-1, 1), torch.zeros(3), 1, 1)]
        batch = PairCollate(enc.extractor)(items)
        torch.testing.assert_close(enc(batch.audio), both, atol=1e-6, rtol=1e-6)


def test_clap_has_no_cls_and_rates_must_match(hf):
    with pytest.raises(ConfigError, match="pooling"):
        HFAudioEncoder(str(hf["clap"]), pooling="cls")
    with pytest.raises(ConfigError, match="features.sample_rate=16000"):
        HFAudioEncoder(str(hf["ast"]), sample_rate=32000)


def test_missing_model_and_mismatched_features_are_one_line_errors(tmp_path, hf):
    with pytest.raises(DataError, match="model.text_enc.pretrained"):
        HFTextEncoder(str(tmp_path / "nowhere"))
    conf = load_config(write_config(tmp_path / "c.yaml", tmp_path, tmp_path / "r",
                                    model={"audio_enc": {"name": "HFAudioEncoder", "pretrained": str(hf["ast"])}}))
    with pytest.raises(ConfigError, match="features.kind"):
        build_model(conf, 32, load_prior=False)
    with pytest.raises(ConfigError, match="model.text_enc.pretrained"):
        load_config(write_config(tmp_path / "c.yaml", tmp_path, tmp_path / "r",
                                 model={"text_enc": {"name": "HFTextEncoder"}}))


def test_embeddings_distinguish_clips(hf):
    enc = HFAudioEncoder(str(hf["ast"]), out_dim=8).eval()
    with torch.no_grad():
        e = torch.nn.functional.normalize(enc(torch.from_numpy(np.stack([tone(1.0, f) for f in (300, 2000)]))
                                              .unsqueeze(-1)), dim=1)
    assert float(e[0] @ e[1]) < 0.999  # a random AST still tells a low tone from a high one
