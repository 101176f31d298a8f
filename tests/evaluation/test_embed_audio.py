"""utils.evaluation.embedding.embed_audio on the CPU: batches capped by padded frames, results in input order."""

from __future__ import annotations

import numpy as np
import torch

from models.audio_encoders import CNN14Encoder
from models.core import DualEncoderModel
from models.text_encoders import SentBERTBaseEncoder
from utils.data.datasets import length_sorted_batches
from utils.evaluation import embedding
from utils.evaluation.embedding import embed_audio, frame_budget_batches


def test_frame_budget_batches_cap_padded_frames():
    lengths = [900, 1500, 750, 1200, 1100, 800, 1400, 1000, 950, 760]
    batches = frame_budget_batches(length_sorted_batches(lengths, 8), lengths, 3000)
    assert sorted(k for b in batches for k in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[k] for k in b) <= 3000  # padded frames within the budget
    assert [len(b) for b in batches] == [2, 2, 3, 1, 2]  # 8-clip batch split, then the 2 shortest
    assert frame_budget_batches([[1, 0]], [10, 5000], 100) == [[1], [0]]  # a clip over the budget goes alone


def test_cpu_embedding_uses_small_batches_in_input_order(monkeypatch):
    torch.manual_seed(0)
    model = DualEncoderModel(CNN14Encoder(out_dim=16, width=0.125), SentBERTBaseEncoder(8, 16)).eval()
    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(n, 64)).astype(np.float32) for n in (70, 130, 90, 110)]
    seen = []
    branch = model.audio_branch
    monkeypatch.setattr(model, "audio_branch", lambda x: seen.append(tuple(x.shape)) or branch(x))
    monkeypatch.setattr(embedding, "CPU_BATCH_FRAMES", 1)  # every clip alone: no padding at all
    got = embed_audio(model, lambda k: feats[k], [len(f) for f in feats], 64, torch.device("cpu"))
    assert seen == [(1, 130, 64), (1, 110, 64), (1, 90, 64), (1, 70, 64)]
    with torch.no_grad():
        one_by_one = torch.cat([branch(torch.from_numpy(f)[None]) for f in feats])
    torch.testing.assert_close(got, one_by_one)
