"""Stage 4 core: PANNs CNN14 checkpoint -> :class:`~models.audio_encoders.CNN14Encoder` state dict.

The encoder uses the PANNs names, so the key map is the identity on every encoder tensor except the new
projection ``fc2``, which keeps its (seeded) random init, as in the DCASE 2023 baseline. PANNs' AudioSet
classifier (``fc_audioset``) and its spectrogram/log-mel front-end are not used (stage 2 computes the
log-mels) and are reported as such.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.audio_encoders import PROJECTION, CNN14Encoder, list_keys
from utils.base.errors import DataError
from utils.base.fileio import read_torch_file, save_torch_file

PANNS_FILE = "Cnn14_mAP=0.431.pth"
PANNS_URL = "https://zenodo.org/record/3987831"
DOWNLOAD_HINT = (
    f"download {PANNS_FILE} from Zenodo record 3987831 ({PANNS_URL}/files/{PANNS_FILE}) "
    "and put it at conf.pretrained.panns_checkpoint (or pass --checkpoint PATH)"
)


@dataclass
class TransferReport:
    """What :func:`transfer_panns` did."""

    checkpoint: Path  # the PANNs file read
    mapped: dict[str, str] = field(default_factory=dict)  # encoder key -> PANNs key, one per copied tensor
    n_values: int = 0  # numbers copied (parameters and BatchNorm statistics)
    kept_init: list[str] = field(default_factory=list)  # encoder keys left at their random init (fc2)
    unused: list[str] = field(default_factory=list)  # PANNs keys not used (fc_audioset.*, the extractors)
    n_parameters: int = 0  # parameters of the encoder (pretrained and new)


def panns_keymap(encoder: CNN14Encoder) -> dict[str, str]:
    """Encoder state-dict key -> PANNs key, for every pretrained tensor (the names are PANNs')."""
    return {key: key for key in encoder.transferable_keys()}


def read_panns_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``"model"`` state dict of a PANNs checkpoint, with a :class:`DataError` if it has none."""
    checkpoint = read_torch_file(path, DOWNLOAD_HINT)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        found = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise DataError(
            f"{path} has no 'model' state dict (found: {found}); expected a PANNs checkpoint such as {PANNS_FILE}. "
            + DOWNLOAD_HINT
        )
    return checkpoint["model"]


def _width_hint(panns: dict[str, torch.Tensor]) -> str:
    first = panns.get("conv_block1.conv1.weight")
    if isinstance(first, torch.Tensor) and first.dim() == 4:
        return f" The checkpoint's conv_block1 has {first.shape[0]} channels, i.e. width {first.shape[0] / 64:g}."
    return ""


def transfer_panns(checkpoint_path: str | os.PathLike, out_dim: int = 300, width: float = 1.0,
                   seed: int = 0) -> tuple[dict[str, torch.Tensor], TransferReport]:
    """Map a PANNs CNN14 checkpoint onto a fresh ``CNN14Encoder(out_dim, width)``.

    Every encoder tensor but the projection ``fc2`` is copied from the checkpoint after a shape check;
    ``fc2`` keeps a random init drawn with ``seed`` (the global RNG is left untouched). Returns the
    encoder's state dict and a :class:`TransferReport`. Raises :class:`DataError` for a missing, corrupt or
    truncated file, one without ``"model"``, missing keys, or shapes that do not fit (naming key and shapes).
    """
    path = Path(checkpoint_path)
    panns = read_panns_state(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = CNN14Encoder(out_dim=out_dim, width=width)
    state = encoder.state_dict()
    keymap = panns_keymap(encoder)

    missing = [src for src in keymap.values() if src not in panns]
    if missing:
        raise DataError(f"{path} lacks CNN14 keys: {list_keys(missing)}; is it a PANNs Cnn14 checkpoint ({PANNS_FILE})?")
    not_tensors = [src for src in keymap.values() if not isinstance(panns[src], torch.Tensor)]
    if not_tensors:
        raise DataError(f"{path}: these entries are not tensors: {list_keys(not_tensors)}")
    wrong = [
        f"{src}: checkpoint {tuple(panns[src].shape)} vs encoder {tuple(state[dst].shape)}"
        for dst, src in keymap.items()
        if panns[src].shape != state[dst].shape
    ]
    if wrong:
        raise DataError(
            f"{path} does not fit CNN14Encoder(out_dim={out_dim}, width={width}); shape mismatch: "
            f"{list_keys(wrong, limit=6)}.{_width_hint(panns)} Set model.audio_enc.width to match."
        )

    for dst, src in keymap.items():
        state[dst] = panns[src].detach().to(dtype=state[dst].dtype).clone()
    encoder.load_state_dict(state, strict=True)
    used = set(keymap.values())
    report = TransferReport(
        checkpoint=path,
        mapped=keymap,
        n_values=sum(state[k].numel() for k in keymap),
        kept_init=[k for k in state if k not in keymap],
        unused=sorted(k for k in panns if k not in used),
        n_parameters=sum(p.numel() for p in encoder.parameters()),
    )
    return encoder.state_dict(), report


def save_cnn14_weights(state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """``torch.save`` the encoder state dict to ``path`` atomically (temp file, then ``os.replace``)."""
    return save_torch_file(state_dict, path)


def summary(report: TransferReport, out_path: str | os.PathLike) -> str:
    """A few lines for the console: what was mapped, what was left out, where it went."""
    return "\n".join([
        f"read      {report.checkpoint}",
        f"mapped    {len(report.mapped)} tensors ({report.n_values:,} values) from PANNs CNN14",
        f"new       {', '.join(report.kept_init)} (random init, the {PROJECTION} projection)",
        f"encoder   {report.n_parameters:,} parameters",
        f"unused    {len(report.unused)} PANNs keys: {list_keys(report.unused)}",
        f"wrote     {out_path}",
    ])


def write_stand_in_checkpoint(path: str | os.PathLike, width: float, seed: int = 0) -> Path:
    """Write a PANNs-format checkpoint with *random* weights, for the demo and tests only.

    It has PANNs' key names under ``"model"`` (plus ``fc_audioset`` and the front-end keys) so stage 4
    can be exercised without the real 300 MB download. The weights are not pretrained.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = CNN14Encoder(out_dim=8, width=width)
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith(PROJECTION)}
    channels = encoder.channels[-1]
    state["fc_audioset.weight"] = torch.zeros(527, channels)
    state["fc_audioset.bias"] = torch.zeros(527)
    state["spectrogram_extractor.stft.conv_real.weight"] = torch.zeros(513, 1, 1024)
    state["spectrogram_extractor.stft.conv_imag.weight"] = torch.zeros(513, 1, 1024)
    state["logmel_extractor.melW"] = torch.zeros(513, 64)
    return save_torch_file({"model": state, "iteration": 0, "stand_in": True}, path)
