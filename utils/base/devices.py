"""Where computation runs: device resolution and thread limits, written once for every stage."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch
from threadpoolctl import ThreadpoolController

from utils.base.config import ConfigError

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``'auto'`` -> cuda when available, else cpu; ``'cpu'`` / ``'cuda[:N]'`` as given.

    A CUDA device without CUDA, or a name torch does not know, is a :class:`~utils.base.config.ConfigError`.
    """
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{spec}' was requested but CUDA is not available; use 'auto' or 'cpu'")
    try:
        return torch.device(spec)
    except RuntimeError as err:
        raise ConfigError(f"unknown device '{spec}': use 'auto', 'cpu' or 'cuda[:N]'") from err


@functools.lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


@contextlib.contextmanager
def one_thread(active: bool = True, torch_too: bool = True) -> Iterator[None]:
    """Run BLAS (and torch, when ``torch_too``) on one thread inside the block, then restore the settings.

    Small work (a 64-frame FFT block, a query or two) does not gain from threads, and on a busy machine the
    spinning thread pools of OpenBLAS and OpenMP stall each other: a clip took 50x longer on 2 loaded cores,
    one caption through MiniLM ~350 ms on two threads vs ~30 ms on one. Process-wide while it lasts, like
    every thread setting of these libraries. ``active=False`` makes it a no-op.
    """
    if not active:
        yield
        return
    with _blas_controller().limit(limits=1, user_api="blas"):
        before = torch.get_num_threads()
        if torch_too and before != 1:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if torch_too and before != 1:
                torch.set_num_threads(before)


def single_thread_process() -> None:
    """For a worker process: one thread for BLAS, OpenMP and torch, for good (the pool gives the parallelism)."""
    for var in THREAD_ENV_VARS:
        os.environ[var] = "1"  # for libraries this process has not loaded yet
    _blas_controller().limit(limits=1)
    torch.set_num_threads(1)


def amp_dtype(spec: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``train.amp``: auto = bf16 on CUDA (fp16 where bf16 is unsupported), off on CPU;
    an explicit ``bf16`` / ``fp16`` applies on every device (CPU autocast runs both)."""
    if spec == "off" or (spec == "auto" and device.type != "cuda"):
        return None
    if spec == "fp16":
        return torch.float16
    if spec == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def use_channels_last(spec: bool | str, device: torch.device) -> bool:
    """``train.channels_last``: auto = on CUDA only; an explicit true / false applies on every device."""
    return device.type == "cuda" if spec == "auto" else bool(spec)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
