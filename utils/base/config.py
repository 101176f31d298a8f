"""Typed configuration: ``conf.yaml`` -> nested dataclasses, with ``--set a.b=value`` overrides.

The dataclasses below are the schema; OmegaConf (structured configs) checks and converts the values.

Every script loads it through :mod:`utils.cli` (which calls :func:`load_config`). Unknown keys, wrong types and
unreadable files fail at once with a :class:`ConfigError` naming the key or path.

Over 300 lines on purpose: the schema of every setting (one commented field each) is one job, and splitting it
would scatter the defaults that ``conf.yaml`` documents.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from utils.base.config_checks import range_problem
from utils.base.errors import PipelineError
from utils.base.text_files import describe_yaml_error

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
class SplitSourceConf:
    """Where a paired split's captions and clips are, and their format (``utils.data.pairs``)."""

    format: Literal["clotho", "pairs"] = "pairs"  # clotho: file_name,caption_1..5; pairs: file_name,caption rows
    captions_csv: str = ""  # relative to data.dataset_dir, or absolute; '' = clotho_captions_<split>.csv
    audio_dir: str = ""  # folder of clips, relative to data.dataset_dir, or absolute; '' = <split>


@dataclass
class DataConf:
    dataset_dir: str = "data/Clotho"  # Clotho root: clotho_captions_<split>.csv and <split>/ wav folders
    work_dir: str | None = None  # where every output goes; None = dataset_dir
    splits: list[str] = field(default_factory=lambda: list(CLOTHO_SPLITS))  # paired splits to preprocess
    query_splits: dict[str, QuerySplitConf] = field(default_factory=dict)  # unpaired splits (challenge test)
    # paired splits read from elsewhere or in another format (own data); preprocessed like data.splits
    sources: dict[str, SplitSourceConf] = field(default_factory=dict)
    train_split: str = "development"  # split used for training; 'a+b' trains on several
    val_split: str = "validation"  # split used for validation every epoch; 'a+b' pools several
    eval_splits: list[str] = field(default_factory=lambda: ["evaluation"])  # splits scored by postprocessing
    text_embeds: str = "sbert_embeds.hdf5"  # caption-embedding file name inside work_dir
    # split -> CSV of caption,file_name[,relevance] rows (relevance > 0 = relevant; relative to dataset_dir);
    # when given, text->audio metrics use it instead of the one-clip pairing (DCASE 2025's evaluation)
    relevance: dict[str, str] = field(default_factory=dict)
    allow_overlap: bool = False  # let training clips also be validation / evaluation clips (recorded in run_info)

    @property
    def out_dir(self) -> Path:
        return Path(self.work_dir if self.work_dir else self.dataset_dir)

    def all_splits(self) -> list[str]:
        paired = list(self.splits) + [s for s in self.sources if s not in self.splits]
        return paired + [s for s in self.query_splits if s not in paired]


@dataclass
class FeatureConf:
    n_mels: int = 64  # mel bands
    win_sec: float = 0.040  # analysis window (s); window = round(win_sec * sr) samples
    hop_sec: float = 0.020  # hop (s); hop = round(hop_sec * sr) samples
    workers: int = 0  # processes for stage 2; 0 = all CPU cores
    device: str = "cpu"  # 'cpu' (multi-process) or 'cuda' (batched on the GPU)
    # 'logmel' = the baseline's (T, n_mels) log-mels; 'waveform' = mono audio resampled to sample_rate, stored as
    # (samples, 1), for encoders with their own feature extractor (HFAudioEncoder). Separate files, side by side.
    kind: Literal["logmel", "waveform"] = "logmel"
    sample_rate: int = 16000  # Hz of stored waveforms (kind: waveform); the audio model's own rate

    @property
    def frames_per_sec(self) -> float:
        """Time steps per second of the stored features: 1 / hop_sec (log-mels) or sample_rate (waveforms)."""
        return float(self.sample_rate) if self.kind == "waveform" else 1.0 / self.hop_sec


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
    dropout: bool = True  # the baseline's dropout (0.2 after each conv block, 0.5 around fc1); False removes it
    # HFAudioEncoder only (any audio model transformers loads with its feature extractor):
    pretrained: str = ""  # hub id or local folder (save_pretrained layout), e.g. MIT/ast-finetuned-audioset-10-10-0.4593
    pooling: Literal["cls", "mean"] = "mean"  # first token, or mean over time of the last hidden states
    window_sec: float = 0.0  # clips longer than this are cut into windows whose embeddings are averaged;
    # 0 = the model's own window (AST: max_length frames, CLAP: 10 s, Whisper: 30 s; wav2vec2/HuBERT: whole clip)
    finetune_lr: float = 0.0  # learning rate of the pretrained body; 0 = train.lr


@dataclass
class TextEncoderConf:
    name: str = "SentBERTBaseEncoder"  # key of models.text_encoders.TEXT_ENCODERS
    out_dim: int = 300  # embedding size (must equal the audio encoder's)
    finetune_lr: float = 2e-5  # learning rate of the transformer when the text model is fine-tuned
    max_seq_length: int = 64  # tokens per caption when fine-tuning (SentenceTransformerEncoder, HFTextEncoder)
    # HFTextEncoder only (any transformers text model: BERT, RoBERTa, GTE, a sentence-transformers folder):
    pretrained: str = ""  # hub id or local folder, e.g. roberta-large
    pooling: Literal["cls", "mean"] = "cls"  # first token, or mean over the caption's tokens
    normalize_captions: bool = False  # lower case and punctuation removed before tokenising (as d25_t6)
    trainable: bool = True  # False freezes the transformer (only the projection trains)


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
class SpecAugmentConf:
    """Time and frequency masks on training log-mels (never on evaluation); 0 masks = off."""

    time_masks: int = 0  # time masks per clip
    time_width: int = 0  # widest time mask (frames); each mask's width is uniform in 0..time_width
    freq_masks: int = 0  # frequency masks per clip
    freq_width: int = 0  # widest frequency mask (mel bands)


@dataclass
class TrainConf:
    epochs: int = 80  # training epochs
    batch_size: int = 32  # caption-clip pairs per batch
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam weight decay
    optimizer: Literal["adam", "adamw"] = "adam"  # adam (L2 in the gradient, the baseline) or adamw (decoupled decay)
    schedule: Literal["plateau", "cosine"] = "plateau"  # plateau = ReduceLROnPlateau (train.scheduler), per epoch;
    # cosine = linear warm-up over warmup_epochs, then cosine decay to lr_min at the last step, stepped per step
    warmup_epochs: float = 0.0  # cosine: epochs of linear warm-up from 0
    lr_min: float = 0.0  # cosine: learning rate at the end (fine-tuned groups: scaled by their lr / train.lr)
    grad_clip: float = 0.0  # clip the gradient's global L2 norm to this; 0 = off
    segment_sec: float = 0.0  # random training crop of this many seconds (shorter clips whole); 0 = whole clips
    specaugment: SpecAugmentConf = field(default_factory=SpecAugmentConf)  # log-mel encoders only
    temperature: float = 0.07  # InfoNCE temperature (the initial value when temperature_trainable)
    temperature_trainable: bool = False  # learn the temperature (a model parameter, saved in checkpoints)
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
    masked_pooling: bool = False  # mask each clip's padding in training too (not the baseline; BatchNorm still sees it)
    wandb: bool = False  # log to Weights & Biases when installed


@dataclass
class RunConf:
    dir: str = "runs"  # parent of run directories
    name: str = "baseline"  # run directory = <dir>/<name>


@dataclass
class EvalConf:
    checkpoint: Literal["best", "last"] = "best"  # checkpoint scored by postprocessing
    batch_size: int = 64  # clips per batch when embedding audio (speed only: every clip is embedded as if alone)
    amp: Literal["off", "auto", "bf16", "fp16"] = "off"  # autocast when validating, scoring, searching; off = float32
    top_k: int = 10  # files per query in search and in the extra top-k submission (the DCASE 2023 one has 10)
    map_k: int = 10  # cut-off of mAP@k (DCASE 2023: 10, DCASE 2025: 16)
    recall_ks: list[int] = field(default_factory=lambda: [1, 5, 10])  # cut-offs of R@k
    bootstrap_resamples: int = 1000  # resamples of the queries for 95% intervals and paired tests
    bootstrap_seed: int = 0  # seed of those resamples (the same seed gives the same intervals)


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


def _structured(raw: dict) -> Config:
    """``raw`` merged over the schema by OmegaConf (type checks and conversions), as typed dataclasses."""
    for section in ("train", "eval"):  # YAML reads a bare `amp: off` as false
        if isinstance(raw.get(section), dict) and raw[section].get("amp") is False:
            raw = {**raw, section: {**raw[section], "amp": "off"}}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(raw))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err)) from err


def _describe(err: OmegaConfBaseException) -> str:
    """One line naming the key: ``unknown config key 'train.lrr'; valid keys here: [...]`` and the like."""
    key = getattr(err, "full_key", None) or ""
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, ConfigKeyError) and key:
        return f"unknown config key '{key}'; valid keys here: {_keys_at(key.split('.')[:-1])}"
    return f"config key '{key}': {reason}" if key else f"invalid config: {reason}"


def _keys_at(path: list[str]) -> list[str]:
    """The field names of the section at ``path`` (e.g. ``['train']``) of the schema."""
    cls: Any = Config
    parts = iter(path)
    for part in parts:
        tp = typing.get_type_hints(cls).get(part)
        if typing.get_origin(tp) is dict:  # a mapping section (data.query_splits): skip its key
            tp = typing.get_args(tp)[1]
            next(parts, None)
        if not dataclasses.is_dataclass(tp):
            return []
        cls = tp
    return sorted(f.name for f in dataclasses.fields(cls))


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
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} {describe_yaml_error(err)}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must contain a mapping at top level")
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    conf = _structured(raw)
    _check(conf)
    return conf


def _check(conf: Config) -> None:
    """What types cannot say: the ranges of :mod:`utils.base.config_checks`, and settings that must agree."""
    if problem := range_problem(conf):
        raise ConfigError(problem)
    if conf.model.audio_enc.out_dim != conf.model.text_enc.out_dim:
        raise ConfigError(
            "model.audio_enc.out_dim and model.text_enc.out_dim must be equal "
            f"(got {conf.model.audio_enc.out_dim} and {conf.model.text_enc.out_dim})"
        )
    if not conf.eval.recall_ks or min(conf.eval.recall_ks) < 1:
        raise ConfigError(f"every eval.recall_ks value must be >= 1, with at least one; got {conf.eval.recall_ks}")
    overlap = set(conf.data.splits) & set(conf.data.query_splits)
    if overlap:
        raise ConfigError(f"data.query_splits and data.splits share {sorted(overlap)}; a split is one or the other")
    check_sources(conf.data)
    _check_encoders(conf)


def _check_encoders(conf: Config) -> None:
    """HF encoders need a model; SpecAugment needs log-mels. (That the audio encoder reads ``features.kind`` is
    checked when the model is built, so stage 2 can make either feature set under any config.)"""
    a, t = conf.model.audio_enc, conf.model.text_enc
    for name, enc in (("audio_enc", a), ("text_enc", t)):
        if enc.name.startswith("HF") and not enc.pretrained:
            raise ConfigError(f"model.{name}.pretrained: {enc.name} needs a hub id or a local folder "
                              f"(save_pretrained layout), e.g. --set model.{name}.pretrained=PATH")
    if conf.train.schedule == "cosine" and conf.train.lr_min > conf.train.lr:
        raise ConfigError(f"train.lr_min ({conf.train.lr_min}) must not exceed train.lr ({conf.train.lr}): the "
                          "cosine schedule decays from lr to lr_min")
    sa = conf.train.specaugment
    if (sa.time_masks or sa.freq_masks) and conf.features.kind != "logmel":
        raise ConfigError("train.specaugment masks log-mels; with features.kind waveform set its time_masks and "
                          "freq_masks to 0")


def check_sources(data: DataConf) -> None:
    """``data.sources`` and the '+'-joined ``train_split`` / ``val_split`` (:mod:`utils.data.pairs`, :mod:`utils.data.split_mix`)."""
    overlap = sorted(set(data.sources) & set(data.query_splits))
    if overlap:
        raise ConfigError(f"data.query_splits and data.sources share {overlap}; a split is one or the other")
    for name, source in data.sources.items():
        if source.format == "pairs" and not (source.captions_csv and source.audio_dir):
            raise ConfigError(f"data.sources.{name}: a 'pairs' split needs captions_csv (a CSV of file_name,caption "
                              "rows) and audio_dir (its clips)")
    odd = [s for s in data.all_splits() if "+" in s]
    if odd:
        raise ConfigError(f"split names {odd} contain '+', which joins splits in data.train_split; rename them")
    for key in ("train_split", "val_split"):
        names = [n.strip() for n in getattr(data, key).split("+")]
        if not all(names) or len(set(names)) != len(names):
            raise ConfigError(f"data.{key} '{getattr(data, key)}' must name one split or several joined by '+' "
                              "(e.g. development+mine), each once")


def to_dict(conf: Any) -> dict:
    """The resolved config as plain data (for run directories and checkpoints)."""
    return dataclasses.asdict(conf)


def from_dict(raw: dict) -> Config:
    """Rebuild a :class:`Config` from :func:`to_dict` output (e.g. a run's saved config)."""
    conf = _structured(raw)
    _check(conf)
    return conf
