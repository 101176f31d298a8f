"""Typed configuration: ``conf.yaml`` -> nested dataclasses, with ``--set a.b=value`` overrides.

Every script calls :func:`load_config` (or :func:`parse_args`). Unknown keys, wrong types and
unreadable files fail at once with a :class:`ConfigError` naming the key or path.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from utils.errors import PipelineError

CLOTHO_SPLITS = ["development", "validation", "evaluation"]


class ConfigError(PipelineError, ValueError):
    """A configuration problem; the message names the key or file and says what to do."""


# --------------------------------------------------------------------------------------------
# Schema. Defaults are the DCASE 2023 Task 6B baseline's settings.
# --------------------------------------------------------------------------------------------


@dataclass
class QuerySplitConf:
    """A split with audio and query captions but no pairing (the DCASE challenge test set)."""

    audio_dir: str = "test"  # folder of clips, relative to data.dataset_dir
    captions_csv: str = "retrieval_captions.csv"  # CSV with a 'caption' column, relative to data.dataset_dir


@dataclass
class DataConf:
    dataset_dir: str = "data/Clotho"  # Clotho root: clotho_captions_<split>.csv and <split>/ wav folders
    work_dir: str | None = None  # where every output goes; None = dataset_dir
    splits: list[str] = field(default_factory=lambda: list(CLOTHO_SPLITS))  # paired splits to preprocess
    query_splits: dict[str, QuerySplitConf] = field(default_factory=dict)  # unpaired splits (challenge test)
    train_split: str = "development"  # split used for training
    val_split: str = "validation"  # split used for validation every epoch
    eval_splits: list[str] = field(default_factory=lambda: ["evaluation"])  # splits scored by postprocessing
    text_embeds: str = "sbert_embeds.hdf5"  # caption-embedding file name inside work_dir

    @property
    def out_dir(self) -> Path:
        return Path(self.work_dir if self.work_dir else self.dataset_dir)

    def all_splits(self) -> list[str]:
        return list(self.splits) + [s for s in self.query_splits if s not in self.splits]


@dataclass
class FeatureConf:
    n_mels: int = 64  # mel bands
    win_sec: float = 0.040  # analysis window (s); window = round(win_sec * sr) samples
    hop_sec: float = 0.020  # hop (s); hop = round(hop_sec * sr) samples
    workers: int = 0  # processes for stage 2; 0 = all CPU cores
    device: str = "cpu"  # 'cpu' (multi-process) or 'cuda' (batched on the GPU)


@dataclass
class TextModelConf:
    model: str = "all-mpnet-base-v2"  # sentence-transformers model: name or local directory
    batch_size: int = 128  # captions per encoding batch
    device: str = "auto"  # 'auto' (cuda if available), 'cpu' or 'cuda'


@dataclass
class AudioEncoderConf:
    name: str = "CNN14Encoder"  # key of models.audio_encoders.AUDIO_ENCODERS
    out_dim: int = 300  # embedding size
    width: float = 1.0  # channel-width multiplier; 1.0 = the real CNN14 (64 ... 2048 channels)
    init: Literal["prior", "random"] = "prior"  # 'prior' loads pretrained.cnn14_weights
    trainable: bool = True  # False freezes everything but the final projection


@dataclass
class TextEncoderConf:
    name: str = "SentBERTBaseEncoder"  # key of models.text_encoders.TEXT_ENCODERS
    out_dim: int = 300  # embedding size (must equal the audio encoder's)
    finetune_lr: float = 2e-5  # learning rate of the transformer when the text model is fine-tuned
    max_seq_length: int = 64  # tokens per caption when fine-tuning


@dataclass
class ModelConf:
    name: str = "DualEncoderModel"  # key of models.core.MODELS
    audio_enc: AudioEncoderConf = field(default_factory=AudioEncoderConf)
    text_enc: TextEncoderConf = field(default_factory=TextEncoderConf)


@dataclass
class PretrainedConf:
    panns_checkpoint: str = "pretrained_models/Cnn14_mAP=0.431.pth"  # PANNs CNN14 checkpoint (download it)
    cnn14_weights: str = "pretrained_models/CNN14_300.pth"  # written by stage 4, read when init: prior


@dataclass
class SchedulerConf:
    factor: float = 0.1  # lr multiplier on plateau
    patience: int = 5  # epochs without improvement before reducing
    threshold: float = 0.005  # minimum improvement of the validation loss (absolute)
    threshold_mode: Literal["abs", "rel"] = "abs"
    min_lr: float = 1e-6  # floor of the learning rate


@dataclass
class EarlyStopConf:
    enabled: bool = True  # stop when the validation loss plateaus (as Ray Tune's TrialPlateauStopper)
    std: float = 0.001  # plateau when the std of the last num_results losses is below this
    num_results: int = 10  # window of epochs looked at
    grace_period: int = 60  # never stop before this many epochs


@dataclass
class TrainConf:
    epochs: int = 80  # training epochs
    batch_size: int = 32  # caption-clip pairs per batch
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam weight decay
    temperature: float = 0.07  # InfoNCE temperature
    seed: int = 0  # seeds python, numpy and torch
    scheduler: SchedulerConf = field(default_factory=SchedulerConf)
    early_stop: EarlyStopConf = field(default_factory=EarlyStopConf)
    device: str = "auto"  # 'auto', 'cpu', 'cuda' or 'cuda:N'
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # autocast; auto = bf16 on CUDA, off on CPU
    channels_last: bool | Literal["auto"] = "auto"  # NHWC convolutions; auto = on CUDA, off on CPU
    compile: bool = False  # torch.compile the audio encoder
    num_workers: int = 2  # DataLoader worker processes
    in_memory: bool = False  # hold a split's features in RAM instead of reading the HDF5
    eval_batch_size: int = 64  # clips / captions per batch when embedding for metrics
    log_every: int = 20  # update the progress-bar loss every N steps
    max_steps_per_epoch: int = 0  # 0 = full epochs; >0 caps steps (smoke tests)
    wandb: bool = False  # log to Weights & Biases when installed


@dataclass
class RunConf:
    dir: str = "runs"  # parent of run directories
    name: str = "baseline"  # run directory = <dir>/<name>


@dataclass
class EvalConf:
    checkpoint: Literal["best", "last"] = "best"  # checkpoint scored by postprocessing
    batch_size: int = 64  # clips per batch when embedding audio
    top_k: int = 10  # files per query in submissions and search


@dataclass
class Config:
    data: DataConf = field(default_factory=DataConf)
    features: FeatureConf = field(default_factory=FeatureConf)
    text: TextModelConf = field(default_factory=TextModelConf)
    model: ModelConf = field(default_factory=ModelConf)
    pretrained: PretrainedConf = field(default_factory=PretrainedConf)
    train: TrainConf = field(default_factory=TrainConf)
    run: RunConf = field(default_factory=RunConf)
    eval: EvalConf = field(default_factory=EvalConf)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir) / self.run.name


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (ints become floats where needed)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"config key '{key}' has an invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}': unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type, raw: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key '{where}'; valid keys here: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    return cls(**kwargs)


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``'train.lr=1e-4'`` -> ``('train.lr', 0.0001)``; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set expects dotted.key=value, got '{item}'")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects dotted.key=value, got '{item}'")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    # YAML reads '1e-4' as a string; accept scientific notation as a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key, value


def load_config(path: str | os.PathLike = "conf.yaml", overrides: list[str] | None = None) -> Config:
    """Read ``path``, apply ``overrides`` (``dotted.key=value``) and return a validated :class:`Config`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (pass --conf PATH)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must contain a mapping at top level")
    raw = _fix_yaml_floats(raw)
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    conf = _build(Config, raw)
    _check(conf)
    return conf


def _fix_yaml_floats(node: Any) -> Any:
    """PyYAML reads ``1e-3`` (no dot) as a string; turn such strings into floats."""
    if isinstance(node, dict):
        return {k: _fix_yaml_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_yaml_floats(v) for v in node]
    if isinstance(node, str):
        try:
            if "e" in node.lower() and node.strip()[0] in "0123456789.-+":
                return float(node)
        except (ValueError, IndexError):
            return node
    return node


def _check(conf: Config) -> None:
    if conf.model.audio_enc.out_dim != conf.model.text_enc.out_dim:
        raise ConfigError(
            "model.audio_enc.out_dim and model.text_enc.out_dim must be equal "
            f"(got {conf.model.audio_enc.out_dim} and {conf.model.text_enc.out_dim})"
        )
    if conf.model.audio_enc.width <= 0:
        raise ConfigError(f"model.audio_enc.width must be > 0, got {conf.model.audio_enc.width}")
    if conf.train.batch_size < 2:
        raise ConfigError(f"train.batch_size must be >= 2 for a contrastive loss, got {conf.train.batch_size}")
    if conf.train.temperature <= 0:
        raise ConfigError(f"train.temperature must be > 0, got {conf.train.temperature}")
    overlap = set(conf.data.splits) & set(conf.data.query_splits)
    if overlap:
        raise ConfigError(f"data.query_splits and data.splits share {sorted(overlap)}; a split is one or the other")


def to_dict(conf: Any) -> dict:
    """The resolved config as plain data (for run directories and checkpoints)."""
    return dataclasses.asdict(conf)


def from_dict(raw: dict) -> Config:
    """Rebuild a :class:`Config` from :func:`to_dict` output (e.g. a run's saved config)."""
    conf = _build(Config, raw)
    _check(conf)
    return conf


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--conf", default="conf.yaml", help="config file (default: conf.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set data.dataset_dir=~/Clotho (repeatable)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.conf, args.overrides)


def require_file(path: str | os.PathLike, what: str, hint: str) -> Path:
    """Return ``path`` if it is a file; else raise a :class:`ConfigError` saying what it is and how to make it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}. {hint}")
    return path
