"""Device-agnostic test helpers: the same test runs on the CPU always and on CUDA when one is present.

Use ``@pytest.mark.parametrize("device", DEVICES)`` (or the ``device`` fixture of a module that imports it);
the CUDA case carries the ``gpu`` marker, so ``pytest -m gpu`` runs exactly the CUDA half
(``benchmarks/gpu_check.py`` does that on a GPU machine).
"""

from __future__ import annotations

import math

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu,
                                          pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine")]),
]


def fp16_unsupported(device: str) -> str | None:
    """Why fp16 autocast + GradScaler cannot run on ``device``, or None when it can."""
    try:
        with torch.autocast(device_type=device, dtype=torch.float16):
            out = torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4, device=device),
                                             torch.ones(1, 1, 3, 3, device=device))
        torch.amp.GradScaler(device)
    except (RuntimeError, AttributeError, TypeError) as err:
        return f"fp16 autocast/GradScaler unavailable on {device}: {err}"
    return None if out.dtype == torch.float16 else f"autocast on {device} ignores float16"


def compiler_missing() -> str | None:
    """Why ``torch.compile`` (inductor) cannot build kernels on this machine, or None."""
    from shutil import which

    if not any(which(c) for c in ("cc", "gcc", "clang", "g++")):
        return "torch.compile needs a C/C++ compiler (cc, gcc, clang); none is on PATH"
    return None


def assert_finite_float32(losses, what: str = "loss") -> None:
    """Every value is a finite float32 scalar (tensors) or a finite float (plain numbers)."""
    for i, loss in enumerate(losses):
        if isinstance(loss, torch.Tensor):
            assert loss.dtype == torch.float32, f"{what} {i} is {loss.dtype}, expected float32"
            assert loss.dim() == 0, f"{what} {i} has shape {tuple(loss.shape)}"
            value = float(loss.detach().cpu())
        else:
            value = float(loss)
        assert math.isfinite(value), f"{what} {i} is not finite ({value})"


def assert_close_rel(a: float, b: float, rel: float, what: str) -> None:
    """|a - b| <= rel * max(|a|, |b|), with the figures in the message."""
    diff = abs(a - b)
    assert diff <= rel * max(abs(a), abs(b), 1e-12), f"{what}: {a} vs {b} differ by {diff:.3g} (> rel {rel})"
