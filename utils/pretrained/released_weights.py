"""The DCASE 2023 Task 6B baseline's released weights (Zenodo record 7752975), checked against a recorded SHA-256.

    paths = fetch_released(Path("pretrained_models/dcase2023"), source)   # {"checkpoint": ..., "audio_encoder.pth": ...}

No checksum is published for these files. So the first download's SHA-256 is recorded in ``SHA256SUMS.json``
next to them (trust on first use), and every later run verifies the files against it: a changed file is moved
aside with an error naming both hashes. The file names are those of the baseline's code and of
:mod:`utils.pretrained.dcase2023_import` (``checkpoint``, the training checkpoint; ``audio_encoder.pth``); they could not be
confirmed from the record here (no access to Zenodo). Importing them is :mod:`utils.pretrained.dcase2023_import`'s job.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from utils.base.errors import DataError
from utils.base.fileio import write_text_atomic
from utils.data.clotho_files import RemoteFile
from utils.data.download import Source
from utils.data.http_download import ChecksumError, Expected, checksum_error, digests, fetch, move_aside

RECORD = "7752975"
RELEASED = (RemoteFile("checkpoint", RECORD, None, 400_000_000), RemoteFile("audio_encoder.pth", RECORD, None,
                                                                             330_000_000))
SUMS_FILE = "SHA256SUMS.json"  # {name: {"sha256", "size", "source", "recorded"}}


def read_sums(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        sums = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); delete it to record the checksums anew") from err
    if not isinstance(sums, dict) or not all(isinstance(v, dict) and "sha256" in v for v in sums.values()):
        raise DataError(f"{path} is not a {{name: {{sha256: ...}}}} table; delete it to record the checksums anew")
    return sums


def fetch_released(folder: Path, source: Source) -> dict[str, Path]:
    """Each released file, from ``--from DIR`` or downloaded into ``folder``, verified against (or, the first
    time, recorded in) ``folder/SHA256SUMS.json``; returns ``{name: path}``."""
    sums_path = folder / SUMS_FILE
    sums = read_sums(sums_path)
    paths = {}
    for f in RELEASED:
        path = source.given(f) or folder / f.name
        if not path.is_file():
            fetch(source.url(f), path, Expected(), source.timeout, source.progress)
        digest = digests(path, ("sha256",), source.progress)["sha256"]
        known = sums.get(f.name)
        if known is None:
            sums[f.name] = {"sha256": digest, "size": path.stat().st_size, "recorded": time.strftime("%Y-%m-%d"),
                            "source": str(path) if source.given(f) else source.url(f)}
            write_text_atomic(sums_path, json.dumps(sums, indent=2) + "\n")
            print(f"{f.name}: no checksum is published for Zenodo record {RECORD}; recorded its SHA-256 {digest} "
                  f"in {sums_path} (later runs check the file against it)")
        elif known["sha256"] != digest:
            problem = f"SHA-256 {digest}, recorded {known['sha256']} on {known.get('recorded', '?')}"
            if source.given(f):
                raise ChecksumError(f"{path} (from --from) is not the file recorded in {sums_path} ({problem}); it "
                                    "is left in place")
            raise checksum_error(path, problem, move_aside(path),
                                 f"Rerun to download it again; if the record changed, delete its entry in {sums_path}.")
        paths[f.name] = path
    return paths
