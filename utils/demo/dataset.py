"""The built-in demo dataset in the Clotho v2.1 layout, synthesized so that its captions describe its sounds.

:func:`make_demo_dataset` writes::

    <out_dir>/clotho_captions_{development,validation,evaluation}.csv   # file_name,caption_1..caption_5
    <out_dir>/{development,validation,evaluation}/*.wav                  # 16-bit PCM, 5-15 s
    <out_dir>/demo_manifest.json                                         # parameters + per-clip attributes

Each clip is a :class:`ClipSpec` drawn from the seed: a main sound (source, pitch, pitch movement, rhythm),
its dynamics (quiet, loud, fading in or out) and sometimes a steady background layer. The audio is
synthesized from those attributes with numpy and the five captions are paraphrases of the same attributes,
so text->audio retrieval is learnable by a small CNN on log-mel features.

File names imitate real Clotho's: some contain spaces, commas, parentheses, ``#``, apostrophes and
ampersands; a few are spelled with HTML entities or stray spaces in the CSV (or on disk). They all match
after :func:`canonical_name` on both sides. Same seed and parameters -> byte-identical CSVs and audio.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from utils.base.config import CLOTHO_SPLITS, ConfigError
from utils.base.errors import DataError
from utils.base.fileio import atomic_write, write_text_atomic
from utils.demo.captions import make_captions
from utils.demo.names import plan_names
from utils.demo.specs import ClipSpec, plan_specs
from utils.demo.synth import synthesize_clip

MANIFEST = "demo_manifest.json"  # written last: its presence means the dataset is complete
IN_PROGRESS = ".demo_in_progress.json"  # lists the files a running generation writes
FORMAT_VERSION = 1  # bump when the generated content changes, so old demo datasets are regenerated
CSV_HEADER = ["file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"]
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # development / validation / evaluation
ALT_SAMPLE_RATES = (22050, 44100)  # a few clips use these instead of the requested rate
MIN_SAMPLE_RATE = 12000  # Hz; keeps every synthesized tone below Nyquist


@dataclass
class DemoClip:
    """One planned clip: where it goes, what it sounds like and how it is described."""

    index: int
    split: str
    disk_name: str  # file name on disk
    csv_name: str  # file name as spelled in the captions CSV
    spec: ClipSpec
    captions: list[str]  # five paraphrases
    duration: float  # seconds
    sample_rate: int  # Hz
    channels: int  # 1 or 2


def split_sizes(n_clips: int, held_out: int | None = None) -> dict[str, int]:
    """Clips per split: ``held_out`` each for validation and evaluation and the rest for development, or,
    without ``held_out``, about 60/20/20 (e.g. 144/48/48 for 240). Every split gets at least one."""
    if n_clips < len(CLOTHO_SPLITS):
        raise ConfigError(f"need at least {len(CLOTHO_SPLITS)} clips (one per split), got {n_clips}")
    if held_out is not None and not 1 <= held_out <= (n_clips - 1) // 2:
        raise ConfigError(f"--held-out must be 1 to {(n_clips - 1) // 2} for {n_clips} clips (one clip must be "
                          f"left for development), got {held_out}")
    val = held_out or max(1, round(n_clips * SPLIT_FRACTIONS[1]))
    ev = held_out or max(1, round(n_clips * SPLIT_FRACTIONS[2]))
    return dict(zip(CLOTHO_SPLITS, (n_clips - val - ev, val, ev), strict=True))


def _formats(n: int, sample_rate: int) -> list[tuple[int, int]]:
    """(sample rate, channels) per clip: a few stereo, a few at another sample rate."""
    alt = [r for r in ALT_SAMPLE_RATES if r != sample_rate]
    out = []
    for i in range(n):
        channels = 2 if i % 12 == 4 else 1
        rate = alt[(i // 12) % len(alt)] if i % 12 == 8 else sample_rate
        out.append((rate, channels))
    return out


def plan_dataset(n_clips: int = 240, seed: int = 0, sample_rate: int = 16000,
                 duration_range: tuple[float, float] = (5.0, 15.0), held_out: int | None = None) -> list[DemoClip]:
    """Every clip's split, names, attributes, captions, duration and format; no audio yet."""
    lo, hi = duration_range
    if sample_rate < MIN_SAMPLE_RATE:
        raise ConfigError(f"sample rate must be >= {MIN_SAMPLE_RATE} Hz (the highest tones reach 5.7 kHz), "
                          f"got {sample_rate}")
    if not 0 < lo <= hi:
        raise ConfigError(f"clip durations must satisfy 0 < min <= max seconds, got {tuple(duration_range)}")
    rng = np.random.default_rng([seed, 0])
    specs = plan_specs(n_clips, rng)
    names = plan_names(specs, rng)
    splits = [s for s, count in split_sizes(n_clips, held_out).items() for _ in range(count)]
    clips = []
    for i, (spec, (disk, csv_name), split, (sr, ch)) in enumerate(
            zip(specs, names, splits, _formats(n_clips, sample_rate), strict=True)):
        clip_rng = np.random.default_rng([seed, 1, i])
        clips.append(DemoClip(i, split, disk, csv_name, spec, make_captions(spec, clip_rng),
                              round(float(clip_rng.uniform(lo, hi)), 2), sr, ch))
    return clips


def _params(n_clips: int, seed: int, sample_rate: int, duration_range: tuple[float, float],
            held_out: int | None) -> dict:
    return {"version": FORMAT_VERSION, "n_clips": n_clips, "seed": seed, "sample_rate": sample_rate,
            "duration_range": [float(duration_range[0]), float(duration_range[1])], "held_out": held_out}


def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def _write_captions(path: Path, clips: list[DemoClip]) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_HEADER)
        writer.writerows([clip.csv_name, *clip.captions] for clip in clips)


def _write_wav(out_dir: Path, clip: DemoClip, seed: int) -> int:
    """Synthesize and write one clip; returns its size in bytes."""
    rng = np.random.default_rng([seed, 2, clip.index])
    audio = synthesize_clip(clip.spec, clip.duration, clip.sample_rate, rng, clip.channels)
    path = out_dir / clip.split / clip.disk_name
    sf.write(path, audio, clip.sample_rate, subtype="PCM_16", format="WAV")
    return path.stat().st_size


def _listed_files(out_dir: Path) -> list[Path]:
    """Files that an earlier (complete or interrupted) demo generation wrote here."""
    files: list[Path] = []
    for name in (MANIFEST, IN_PROGRESS):
        path = out_dir / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise DataError(f"cannot read {path} ({err}); delete it and rerun") from err
            files += [out_dir / c["split"] / c["file"] for c in data.get("clips", [])]
    return files


def _start(out_dir: Path, params: dict, clips: list[DemoClip]) -> None:
    """Mark a generation as running, then remove what an earlier demo generation wrote.

    The in-progress marker lists the old and the new files, so a run interrupted at any point is
    cleaned up by the next one. A folder holding a dataset that is not the demo is left alone.
    """
    ours = (out_dir / MANIFEST).is_file() or (out_dir / IN_PROGRESS).is_file()
    foreign = sorted(p.name for p in out_dir.glob("clotho_captions_*.csv"))
    if foreign and not ours:
        raise DataError(f"{out_dir} already holds a dataset that is not the demo ({', '.join(foreign)}); "
                        "choose another data.dataset_dir or delete it first")
    old = _listed_files(out_dir)
    listed = [{"split": p.parent.name, "file": p.name} for p in old]
    listed += [{"split": c.split, "file": c.disk_name} for c in clips]
    _write_json(out_dir / IN_PROGRESS, {"params": params, "clips": listed})
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for path in old:
        path.unlink(missing_ok=True)


def _manifest(params: dict, clips: list[DemoClip], sizes: list[int]) -> dict:
    return {"params": params, "counts": _counts(clips), "clips": [
        {"split": c.split, "file": c.disk_name, "csv_name": c.csv_name, "bytes": size,
         "duration": c.duration, "sample_rate": c.sample_rate, "channels": c.channels,
         "attributes": asdict(c.spec)} for c, size in zip(clips, sizes, strict=True)]}


def _counts(clips: list[DemoClip]) -> dict[str, int]:
    return {split: sum(c.split == split for c in clips) for split in CLOTHO_SPLITS}


def make_demo_dataset(out_dir: str | os.PathLike, n_clips: int = 240, seed: int = 0, sample_rate: int = 16000,
                      progress: bool = True, duration_range: tuple[float, float] = (5.0, 15.0),
                      held_out: int | None = None) -> dict[str, int]:
    """Write the demo dataset into ``out_dir`` and return the number of clips per split.

    Files of an earlier demo generation in ``out_dir`` are replaced; the manifest is written last,
    so an interrupted run never looks complete (see :func:`demo_dataset_complete`).
    """
    out_dir = Path(out_dir)
    params = _params(n_clips, seed, sample_rate, duration_range, held_out)
    clips = plan_dataset(n_clips, seed, sample_rate, duration_range, held_out)
    out_dir.mkdir(parents=True, exist_ok=True)
    _start(out_dir, params, clips)
    for split in CLOTHO_SPLITS:
        (out_dir / split).mkdir(exist_ok=True)
    sizes = [_write_wav(out_dir, c, seed) for c in tqdm(clips, desc="demo clips", unit="clip", disable=not progress)]
    for split in CLOTHO_SPLITS:
        _write_captions(out_dir / f"clotho_captions_{split}.csv", [c for c in clips if c.split == split])
    _write_json(out_dir / MANIFEST, _manifest(params, clips, sizes))
    (out_dir / IN_PROGRESS).unlink()
    return _counts(clips)


def demo_dataset_complete(out_dir: str | os.PathLike, n_clips: int = 240, seed: int = 0, sample_rate: int = 16000,
                          duration_range: tuple[float, float] = (5.0, 15.0), held_out: int | None = None) -> bool:
    """True if ``out_dir`` holds a finished demo dataset made with these parameters (every file present, same size)."""
    out_dir = Path(out_dir)
    path = out_dir / MANIFEST
    if not path.is_file() or (out_dir / IN_PROGRESS).exists():
        return False
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("params") != _params(n_clips, seed, sample_rate, duration_range, held_out):
        return False
    if not all((out_dir / f"clotho_captions_{s}.csv").is_file() for s in CLOTHO_SPLITS):
        return False
    for clip in manifest.get("clips", []):
        wav = out_dir / clip["split"] / clip["file"]
        if not wav.is_file() or wav.stat().st_size != clip["bytes"]:
            return False
    return len(manifest.get("clips", [])) == n_clips
