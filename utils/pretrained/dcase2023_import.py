"""Import the released DCASE 2023 Task 6B baseline weights (Zenodo record 7752975) into this pipeline.

Two files were published, both read with ``torch.load(weights_only=True)``:

* the training checkpoint, ``torch.save((model.state_dict(), optimizer.state_dict()), path)`` of the
  baseline's ``DualEncoderModel`` -> :func:`import_checkpoint` writes a normal run directory
  (``config.yaml``, ``run_info.json``, ``checkpoints/best.pt``) that postprocessing, ``search.py`` and
  ``Retriever.from_run`` use unchanged;
* ``audio_encoder.pth``, the state dict of its ``CNN14Encoder`` alone -> :func:`import_audio_encoder` writes
  a file that :meth:`models.audio_encoders.CNN14Encoder.load_pretrained` accepts
  (``pretrained.cnn14_weights``).

The baseline's CNN14 keeps its conv blocks in one ``nn.Sequential`` (``cnn.<i>``) of six blocks of 8 modules,
``[Conv2d, BatchNorm2d, ReLU, Conv2d, BatchNorm2d, ReLU, AvgPool2d(2), Dropout(0.2)]``, and its fc layer in
``fc = Sequential(Dropout, Linear, ReLU, Dropout)``; ours names them as PANNs does (see :data:`AUDIO_KEYS`).
The frozen table of SBERT vectors of the training captions (``text_enc.embedding.weight``) is dropped: the
pipeline computes SBERT vectors itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from models.audio_encoders import CNN14_CHANNELS, CNN14Encoder, list_keys
from models.core import build_model
from utils import run_record, runs
from utils.base.config import Config, ConfigError, RunConf, to_dict
from utils.base.errors import DataError, warn
from utils.base.fileio import read_torch_file, save_torch_file, write_text_atomic
from utils.text.sbert_download import sha256_file

ZENODO = "Zenodo record 7752975"
GET_HINT = f"download the DCASE 2023 baseline files from {ZENODO}"
BASELINE_TEXT_DIM = 768  # the baseline projects all-mpnet-base-v2 vectors
BASELINE_TEXT_MODEL = "all-mpnet-base-v2"
MODULES_PER_BLOCK = 8  # Conv2d, BatchNorm2d, ReLU, Conv2d, BatchNorm2d, ReLU, AvgPool2d, Dropout
BLOCK_LAYERS = {"conv1": 0, "bn1": 1, "conv2": 3, "bn2": 4}  # index inside a block of the baseline's cnn
BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
AUDIO_PREFIX = "audio_enc."
TEXT_KEYS = ("text_enc.fc.weight", "text_enc.fc.bias")
DROPPED_KEYS = ("text_enc.embedding.weight",)  # the baseline's frozen SBERT table of its training captions


def _audio_keys() -> dict[str, str]:
    """Baseline ``CNN14Encoder`` state-dict key -> ours (``cnn.8.weight`` -> ``conv_block2.conv1.weight``)."""
    keys = {f"bn0.{p}": f"bn0.{p}" for p in BN_PARAMS}
    for b in range(len(CNN14_CHANNELS)):
        for layer, offset in BLOCK_LAYERS.items():
            params = ("weight",) if layer.startswith("conv") else BN_PARAMS
            for p in params:
                keys[f"cnn.{MODULES_PER_BLOCK * b + offset}.{p}"] = f"conv_block{b + 1}.{layer}.{p}"
    for p in ("weight", "bias"):
        keys[f"fc.1.{p}"] = f"fc1.{p}"  # the Linear inside Sequential(Dropout, Linear, ReLU, Dropout)
        keys[f"fc2.{p}"] = f"fc2.{p}"
    return keys


AUDIO_KEYS = _audio_keys()
MODEL_KEYS = {AUDIO_PREFIX + k: AUDIO_PREFIX + v for k, v in AUDIO_KEYS.items()} | {k: k for k in TEXT_KEYS}


# --------------------------------------------------------------------------------------------
# Reading the baseline's files
# --------------------------------------------------------------------------------------------


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _describe(obj: object) -> str:
    if isinstance(obj, dict):
        return f"a dict with keys {list_keys([str(k) for k in obj], 6)}"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"


def read_baseline_file(path: str | os.PathLike) -> tuple[str, dict[str, torch.Tensor]]:
    """``("checkpoint", model state)`` or ``("audio_encoder", encoder state)`` read from ``path``.

    Raises :class:`DataError` naming the file when it is missing, unreadable, or neither format.
    """
    path = Path(path)
    obj = read_torch_file(path, GET_HINT)
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and _is_state_dict(obj[0]) \
            and any(k.startswith(AUDIO_PREFIX) for k in obj[0]):
        return "checkpoint", obj[0]
    if _is_state_dict(obj) and any(k.startswith("cnn.") for k in obj):
        return "audio_encoder", obj
    raise DataError(
        f"{path} is neither the DCASE 2023 baseline's training checkpoint (a (model state dict, optimizer state "
        f"dict) tuple with audio_enc.* keys) nor its audio_encoder.pth (a state dict with cnn.* keys); it holds "
        f"{_describe(obj)}. {GET_HINT}"
    )


def _read_format(path: Path, wanted: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, which must be of format ``wanted``; the error names the right option."""
    kind, state = read_baseline_file(path)
    if kind != wanted:
        option = {"checkpoint": "--checkpoint", "audio_encoder": "--audio-encoder"}[kind]
        raise DataError(f"{path} is the baseline's {kind.replace('_', ' ')} file, not its "
                        f"{wanted.replace('_', ' ')}: pass it with {option}")
    return state


# --------------------------------------------------------------------------------------------
# Checks and key conversion
# --------------------------------------------------------------------------------------------


def check_config(conf: Config) -> None:
    """The config must describe the baseline's model: CNN14 of width 1.0 and the SBERT projection."""
    m = conf.model
    if m.audio_enc.name != "CNN14Encoder" or m.text_enc.name != "SentBERTBaseEncoder" or m.name != "DualEncoderModel":
        raise ConfigError(
            f"the DCASE 2023 baseline is DualEncoderModel(CNN14Encoder, SentBERTBaseEncoder); the config names "
            f"{m.name}({m.audio_enc.name}, {m.text_enc.name}): set model.name, model.audio_enc.name and "
            "model.text_enc.name to those"
        )
    if m.audio_enc.width != 1.0:
        raise ConfigError(f"model.audio_enc.width is {m.audio_enc.width}, but the released baseline is the full "
                          "CNN14 (width 1.0): --set model.audio_enc.width=1.0")
    if Path(conf.text.model).name != BASELINE_TEXT_MODEL:
        warn(f"text.model is '{conf.text.model}', but the baseline was trained on {BASELINE_TEXT_MODEL} vectors: "
             f"score it with caption vectors of {BASELINE_TEXT_MODEL} (--set text.model={BASELINE_TEXT_MODEL})")


def _check_width(state: dict[str, torch.Tensor], first_conv: str, path: Path) -> None:
    """Refuse a CNN14 of another width, named by its first conv's channel count."""
    channels = state[first_conv].shape[0] if state[first_conv].dim() == 4 else None
    if channels != CNN14_CHANNELS[0]:
        raise DataError(f"{path}: {first_conv} has shape {tuple(state[first_conv].shape)}, so this CNN14 is not of "
                        f"width 1.0 ({CNN14_CHANNELS[0]} channels in its first conv); only the released full-width "
                        "baseline can be imported")


def convert_state(state: dict[str, torch.Tensor], keys: dict[str, str], expected: dict[str, torch.Size],
                  path: Path, dropped: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Rename ``state``'s keys with ``keys`` (baseline -> ours), checking every shape against ``expected``.

    Raises :class:`DataError` naming the file and keys when keys are missing or unknown, or a shape differs.
    """
    missing = [k for k in keys if k not in state]
    if missing:
        raise DataError(f"{path} lacks keys of the DCASE 2023 baseline: {list_keys(missing)}; is it a complete "
                        f"baseline file? ({GET_HINT})")
    unknown = [k for k in state if k not in keys and k not in dropped]
    if unknown:
        raise DataError(f"{path} has keys the DCASE 2023 baseline does not have: {list_keys(unknown)}; it was made "
                        "by another model")
    first_conv = next(k for k in keys if k.endswith("cnn.0.weight"))
    _check_width(state, first_conv, path)
    for theirs, ours in keys.items():
        if state[theirs].shape != expected[ours]:
            raise DataError(f"{path}: {theirs} has shape {tuple(state[theirs].shape)}, expected "
                            f"{tuple(expected[ours])} ({ours} here). Check model.audio_enc.out_dim, "
                            f"model.text_enc.out_dim and features.n_mels against the baseline's (300, 300, 64)")
    return {ours: state[theirs].detach().clone(memory_format=torch.contiguous_format) for theirs, ours in keys.items()}


def expected_shapes(conf: Config, audio_only: bool = False) -> dict[str, torch.Size]:
    """Our state-dict shapes for ``conf`` (built on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        if audio_only:
            a = conf.model.audio_enc
            module = CNN14Encoder(out_dim=a.out_dim, width=a.width, n_mels=conf.features.n_mels)
        else:
            module = build_model(conf, BASELINE_TEXT_DIM, load_prior=False)
    return {k: v.shape for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------


def import_checkpoint(conf: Config, checkpoint: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """Write the run directory ``run_dir`` from the baseline's training checkpoint; returns ``best.pt``'s path.

    ``run_dir`` must not hold a run yet. The written run is loaded back (:func:`utils.runs.load_run`)
    before returning, so a run that does not load is never reported as imported.
    """
    check_config(conf)
    path, run_dir = Path(checkpoint), Path(run_dir)
    ckpt_file = runs.checkpoint_file(run_dir, "best")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise DataError(f"{run_dir} already exists and is not empty; choose another --out or remove it")
    state = convert_state(_read_format(path, "checkpoint"), MODEL_KEYS, expected_shapes(conf), path, DROPPED_KEYS)
    conf = dataclasses.replace(conf, run=RunConf(dir=str(run_dir.parent), name=run_dir.name))
    run_record.write_run_info(run_dir, conf, torch.device("cpu"), world_size=1)
    info_file = runs.run_file(run_dir, "run_info")
    info = json.loads(info_file.read_text(encoding="utf-8"))
    info["imported_from"] = {"file": str(path.resolve()), "sha256": sha256_file(path),
                             "what": f"DCASE 2023 Task 6B baseline training checkpoint ({ZENODO})"}
    write_text_atomic(info_file, json.dumps(info, indent=2) + "\n")
    model = {"model": state, "config": to_dict(conf), "text_dim": BASELINE_TEXT_DIM}
    runs.save_checkpoint(runs.best_checkpoint(model, epoch=None, val=None), run_dir, "best")
    runs.load_run(run_dir, "best", "cpu")
    return ckpt_file


def import_audio_encoder(conf: Config, audio_encoder: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write ``out``, the baseline's audio encoder in our key layout (``CNN14Encoder.load_pretrained``)."""
    check_config(conf)
    path, out = Path(audio_encoder), Path(out)
    state = convert_state(_read_format(path, "audio_encoder"), AUDIO_KEYS, expected_shapes(conf, audio_only=True),
                          path)
    save_torch_file(state, out)
    a = conf.model.audio_enc
    CNN14Encoder(out_dim=a.out_dim, width=a.width, n_mels=conf.features.n_mels).load_pretrained(out)
    return out
