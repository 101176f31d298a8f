"""Where each pipeline artifact lives. Every stage reads and writes through these functions."""

from __future__ import annotations

from pathlib import Path

from utils.base.config import Config


def work_dir(conf: Config) -> Path:
    return conf.data.out_dir


def captions_csv(conf: Config, split: str) -> Path:
    """A paired split's caption file: ``data.sources.<split>.captions_csv``, else ``clotho_captions_<split>.csv``."""
    source = conf.data.sources.get(split)
    name = source.captions_csv if source and source.captions_csv else f"clotho_captions_{split}.csv"
    return Path(conf.data.dataset_dir) / Path(name).expanduser()


def audio_dir(conf: Config, split: str) -> Path:
    """The folder of a split's clips (an absolute ``audio_dir`` in the config stays absolute)."""
    query, source = conf.data.query_splits.get(split), conf.data.sources.get(split)
    name = query.audio_dir if query else source.audio_dir if source and source.audio_dir else split
    return Path(conf.data.dataset_dir) / Path(name).expanduser()


def split_format(conf: Config, split: str) -> str:
    """``'clotho'``, ``'pairs'`` (``data.sources``) or ``'query'`` (``data.query_splits``)."""
    if split in conf.data.query_splits:
        return "query"
    source = conf.data.sources.get(split)
    return source.format if source else "clotho"


def query_csv(conf: Config, split: str) -> Path:
    """The query-caption CSV of an unpaired split (``data.query_splits``)."""
    return Path(conf.data.dataset_dir) / conf.data.query_splits[split].captions_csv


def text_table(conf: Config, split: str) -> Path:
    """Stage 1 output: one row per caption (tid, fid, fname, raw_text, text)."""
    return work_dir(conf) / f"{split}_text.csv"


def audio_table(conf: Config, split: str) -> Path:
    """Stage 1 output: one row per usable clip (fid, fname, path, duration, sample_rate)."""
    return work_dir(conf) / f"{split}_audio.csv"


def skipped_table(conf: Config, split: str) -> Path:
    """Stages 1-2: clips left out, with the reason."""
    return work_dir(conf) / f"{split}_skipped.csv"


def logmels(conf: Config, split: str) -> Path:
    """Stage 2 output: one ``[T, 64]`` float32 dataset per fid."""
    return work_dir(conf) / f"{split}_audio_logmels.hdf5"


def waveforms(conf: Config, split: str) -> Path:
    """Stage 2 output with ``features.kind: waveform``: one ``(samples, 1)`` float32 dataset per fid, at
    ``features.sample_rate`` (the rate is in the name, so sets for several models live side by side)."""
    return work_dir(conf) / f"{split}_audio_waveforms_{conf.features.sample_rate}hz.hdf5"


def features(conf: Config, split: str) -> Path:
    """The stage 2 file the config's audio encoder reads: :func:`logmels` or :func:`waveforms` (``features.kind``)."""
    return waveforms(conf, split) if conf.features.kind == "waveform" else logmels(conf, split)


def text_embeds(conf: Config) -> Path:
    """Stage 3 output: caption embeddings of every split, keyed by tid."""
    return work_dir(conf) / conf.data.text_embeds


def stats(conf: Config) -> Path:
    """Stage 1 output: per-split statistics."""
    return work_dir(conf) / "dataset_stats.json"
