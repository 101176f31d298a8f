"""utils.evaluation.embedding.embed_audio: the baseline's protocol (each clip embedded alone, unpadded) whatever the
batch size or clip order, on CPU batches capped by padded frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.audio_encoders import CNN14Encoder
from models.core import DualEncoderModel
from models.text_encoders import SentBERTBaseEncoder
from utils.data.datasets import length_sorted_batches
from utils.evaluation import embedding
from utils.evaluation.embedding import embed_audio, frame_budget_batches

# Many lengths: under 64 frames (padded to 64 alone), around each pooling boundary, odd and even.
LENGTHS = (20, 63, 64, 65, 71, 100, 127, 128, 129, 190, 255, 256, 257, 300)


def distinguishing_model(seed: int = 0) -> DualEncoderModel:
    """A narrow CNN14 with random weights and perturbed BatchNorm statistics, in eval mode: unlike an untrained
    CNN14 (every clip maps to nearly one vector), its vectors differ clearly between clips."""
    torch.manual_seed(seed)
    model = DualEncoderModel(CNN14Encoder(out_dim=16, width=0.125, dropout=False), SentBERTBaseEncoder(8, 16))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.3)
    return model.eval()


def clips(seed: int = 0) -> list[np.ndarray]:
    """One clip per length, each with its own spectral shape and a slope in time: (time, mels) float32."""
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(n, 64)) + 3.0 * rng.normal(size=64) + np.linspace(0, 4 * rng.normal(), n)[:, None]
             - 3.0).astype(np.float32) for n in LENGTHS]


def alone(model, feats) -> torch.Tensor:
    """The independent reference: the plain forward on each clip by itself, no batch, no lengths."""
    with torch.no_grad():
        return torch.cat([model.audio_branch(torch.from_numpy(f)[None]) for f in feats])  # (n, E)


@pytest.fixture(scope="module")
def reference():
    model, feats = distinguishing_model(), clips()
    return model, feats, alone(model, feats)


def test_model_distinguishes_clips(reference):
    ref = reference[2]
    dist = torch.cdist(ref, ref)
    assert float(dist[~torch.eye(len(ref), dtype=torch.bool)].min()) > 1e-2  # 1000x the tolerance: a mix-up shows


@pytest.mark.parametrize(("batch_size", "order_seed"), [(1, 1), (3, None), (5, 2), (64, 1)])
def test_batched_equals_alone_whatever_batch_and_order(reference, batch_size, order_seed):
    model, feats, ref = reference
    order = np.arange(len(feats)) if order_seed is None else np.random.default_rng(order_seed).permutation(len(feats))
    got = embed_audio(model, lambda k: feats[order[k]], [len(feats[i]) for i in order], batch_size,
                      torch.device("cpu"))
    if batch_size > 1:  # the batches really pad: the old protocol (padding in the pooling) moves the vectors
        padded = embed_audio(model, lambda k: feats[order[k]], [len(feats[i]) for i in order], batch_size,
                             torch.device("cpu"), exact=False)
        assert float((padded - ref[order]).abs().max()) > 1e-2
    torch.testing.assert_close(got, ref[order], atol=1e-5, rtol=0)


def test_encoder_masks_padding_whatever_its_value(reference):
    """A zero-padded batch and a batch padded with -50 give each clip its vector alone."""
    model, feats, ref = reference
    for fill in (0.0, -50.0):
        batch = torch.full((len(feats), max(LENGTHS), 64), fill)
        for k, f in enumerate(feats):
            batch[k, :len(f)] = torch.from_numpy(f)
        with torch.no_grad():
            got = model.audio_branch(batch, torch.as_tensor(LENGTHS))
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_frame_budget_batches_cap_padded_frames():
    lengths = [900, 1500, 750, 1200, 1100, 800, 1400, 1000, 950, 760]
    batches = frame_budget_batches(length_sorted_batches(lengths, 8), lengths, 3000)
    assert sorted(k for b in batches for k in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[k] for k in b) <= 3000  # padded frames within the budget
    assert [len(b) for b in batches] == [2, 2, 3, 1, 2]  # 8-clip batch split, then the 2 shortest
    assert frame_budget_batches([[1, 0]], [10, 5000], 100) == [[1], [0]]  # a clip over the budget goes alone


def test_cpu_embedding_uses_small_batches_in_input_order(monkeypatch):
    model = distinguishing_model()
    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(n, 64)).astype(np.float32) for n in (70, 130, 90, 110)]
    seen = []
    branch = model.audio_branch
    monkeypatch.setattr(model, "audio_branch", lambda x, n=None: seen.append(tuple(x.shape)) or branch(x, n))
    monkeypatch.setattr(embedding, "CPU_BATCH_FRAMES", 1)  # every clip alone
    got = embed_audio(model, lambda k: feats[k], [len(f) for f in feats], 64, torch.device("cpu"))
    assert seen == [(1, 130, 64), (1, 110, 64), (1, 90, 64), (1, 70, 64)]
    torch.testing.assert_close(got, alone(model, feats), atol=1e-5, rtol=0)
