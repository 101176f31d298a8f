import pytest
import torch
import torch.nn.functional as F

from utils.training.infonce import info_nce


def reference_info_nce(audio, text, clip_ids, temperature):
    """The baseline's per-sample loop (LogSoftmaxLoss), written out plainly."""
    n = audio.shape[0]
    loss = torch.zeros(())
    for i in range(n):
        idx = [j for j in range(n) if clip_ids[j] != clip_ids[i]] + [i]
        s_ai = audio[idx] @ text[i] / temperature  # text i -> candidate audios
        s_it = text[idx] @ audio[i] / temperature  # audio i -> candidate texts
        target = torch.tensor([float(j == i) for j in idx])
        loss = loss + F.cross_entropy(s_ai, target) + F.cross_entropy(s_it, target)
    return loss / n


@pytest.mark.parametrize("seed", range(5))
def test_matches_per_sample_reference_value_and_gradients(seed):
    g = torch.Generator().manual_seed(seed)
    n = 12
    clip_ids = torch.randint(0, 5, (n,), generator=g).tolist()  # repeated clips in the batch
    assert len(set(clip_ids)) < n
    a0 = F.normalize(torch.randn(n, 16, generator=g), dim=1)
    t0 = F.normalize(torch.randn(n, 16, generator=g), dim=1)
    a1, t1 = a0.clone().requires_grad_(), t0.clone().requires_grad_()
    a2, t2 = a0.clone().requires_grad_(), t0.clone().requires_grad_()
    ours = info_nce(a1, t1, clip_ids, 0.07)
    ref = reference_info_nce(a2, t2, clip_ids, 0.07)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    torch.testing.assert_close(a1.grad, a2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(t1.grad, t2.grad, atol=1e-5, rtol=1e-5)


def test_string_ids_equal_int_ids():
    a, t = torch.randn(6, 8), torch.randn(6, 8)
    strs = ["x", "y", "x", "z", "y", "w"]
    ints = [0, 1, 0, 2, 1, 3]
    assert info_nce(a, t, strs, 0.1).item() == pytest.approx(info_nce(a, t, ints, 0.1).item())


def test_same_clip_captions_are_not_negatives():
    # Two pairs of the same clip with identical embeddings: excluding each other, the loss is the
    # minimum possible when all candidates are far away.
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    t = a.clone()
    loss_same = info_nce(a, t, [0, 0, 1], 0.07)
    loss_diff = info_nce(a, t, [0, 1, 2], 0.07)  # now pair 0 and 1 are negatives of each other
    assert loss_same.item() < 1e-3
    assert loss_diff.item() > 0.5


def test_float32_under_bfloat16_inputs():
    a = torch.randn(8, 4).bfloat16()
    t = torch.randn(8, 4).bfloat16()
    assert info_nce(a, t, list(range(8)), 0.07).dtype == torch.float32
