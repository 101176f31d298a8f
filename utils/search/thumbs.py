"""Small spectrogram thumbnails of indexed files for the listening page: made on demand, cached on disk.

:func:`thumbnail_png` renders a file's log-mel spectrogram (its first :data:`THUMB_SECONDS`) as a
``THUMB_WIDTH x THUMB_HEIGHT`` PNG, low frequencies at the bottom; :class:`ThumbCache` keeps one PNG per
(path, mtime, size) in a folder, so a changed file gets a new thumbnail. No HTTP here (see
:mod:`utils.search.page_browse`).
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from utils.data.audio import load_audio
from utils.features.logmel import logmel

THUMB_WIDTH, THUMB_HEIGHT = 160, 40  # pixels
THUMB_SECONDS = 30.0  # audio drawn at most (a long file's first half-minute)
THUMB_MELS = 40  # mel bands drawn (resampled to THUMB_HEIGHT rows)
DYNAMIC_DB = 60.0  # the darkest colour is this far below the loudest cell

# A dark-to-bright palette (dark blue, violet, orange, pale yellow), interpolated to 256 entries.
_ANCHORS = np.array([[10, 10, 40], [80, 20, 110], [190, 55, 80], [250, 150, 40], [252, 250, 190]], np.float32)
PALETTE = np.stack([np.interp(np.linspace(0, 4, 256), np.arange(5), _ANCHORS[:, c]) for c in range(3)],
                   axis=1).astype(np.uint8)  # (256, 3)


def thumbnail_png(path: str | Path) -> bytes:
    """The PNG bytes of ``path``'s spectrogram thumbnail; an unreadable file raises
    :class:`utils.data.audio.AudioReadError`."""
    y, sr = load_audio(path)
    y = y[: int(THUMB_SECONDS * sr)]
    mel = logmel(y, sr, n_mels=THUMB_MELS)  # (time, mels) natural-log power
    db = mel.T[::-1] * (10 / np.log(10))  # (mels, time), low frequencies at the bottom, in dB
    cols = np.linspace(0, db.shape[1], THUMB_WIDTH + 1).astype(int)
    image = np.stack([db[:, a:max(b, a + 1)].max(axis=1) for a, b in zip(cols[:-1], cols[1:], strict=True)], axis=1)
    top = float(image.max())
    level = np.clip((image - (top - DYNAMIC_DB)) / DYNAMIC_DB, 0, 1)  # (mels, width) in [0, 1]
    rgb = PALETTE[(level * 255).astype(np.uint8)]  # (mels, width, 3)
    out = io.BytesIO()
    Image.fromarray(rgb).resize((THUMB_WIDTH, THUMB_HEIGHT), Image.Resampling.BILINEAR).save(out, format="PNG")
    return out.getvalue()


@dataclass
class ThumbCache:
    """Thumbnails in ``folder``, one file per (relative path, mtime, size)."""

    folder: Path

    def path(self, rel: str, mtime: int, size: int) -> Path:
        key = hashlib.sha1(f"{rel}\0{mtime}\0{size}".encode()).hexdigest()
        return self.folder / key[:2] / f"{key}.png"

    def get(self, source: Path, rel: str, mtime: int, size: int) -> Path:
        """The cached PNG of ``source``, made now if missing (written atomically: concurrent requests are safe)."""
        target = self.path(rel, mtime, size)
        if not target.is_file():
            png = thumbnail_png(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")  # one per request: threads share a pid
            try:
                tmp.write_bytes(png)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        return target
