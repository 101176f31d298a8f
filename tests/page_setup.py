"""A listening page on a tiny run, shared by tests/search/test_search_page.py and tests/search/test_search_browser.py.

The run has random weights and the synthetic text model, so its captions are mapped here to known vectors:
each caption in ``CAPTIONS`` is embedded as exactly its clip's audio embedding (the clip the search must find
first), any other text as a fixed random unit vector. Everything else (index, API, page, audio) is the real code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from builders import make_run_dir, tiny_conf, tone, write_folder

from utils.base.tables import TEXT_COLUMNS, write_rows
from utils.search.page_state import PageState, open_page
from utils.search.retriever import Retriever

CAPTIONS = {  # caption -> the clip it describes
    "a low hum": "low.wav",
    "a high pitched beep": "high.wav",
    "hiss of static noise": "noise.flac",
    "a rising chirp": "sub/chirp.wav",
    "a soft whistle": "sub/mid.ogg",
}


def write_clips(folder: Path) -> dict[str, Path]:
    """Eight clips of distinct content (test_search's five plus three), an unreadable file and a non-audio file."""
    files = write_folder(folder)
    extra = {
        "bass.wav": (tone(80, 16000, seconds=3.0), 16000),
        "buzz.wav": (tone(2000, 16000, noise=0.3, seed=3), 16000),
        "sub/hum.wav": (tone(300, 16000, seconds=2.5, noise=0.02, seed=4), 16000),
    }
    for rel, (y, sr) in extra.items():
        sf.write(folder / rel, y, sr)
    (folder / "broken.wav").write_bytes(b"RIFF not a wave file" * 10)
    return files | {rel: folder / rel for rel in extra}


def fake_text(retriever: Retriever) -> None:
    """Embed the captions of CAPTIONS as their clip's audio embedding (see the module docstring)."""
    index = retriever.index
    targets = {q: index.embeddings[index.paths.index(rel)] for q, rel in CAPTIONS.items()}
    other = np.random.default_rng(0).normal(size=index.embeddings.shape[1]).astype(np.float32)
    other /= np.linalg.norm(other)

    def embed_text(texts):
        texts = [texts] if isinstance(texts, str) else list(texts)
        return np.stack([targets.get(t, other) for t in texts]).astype(np.float32)  # (n, E)

    retriever.embed_text = embed_text


def build_page(tmp: Path, max_upload_mb: float = 20.0) -> tuple[PageState, dict[str, Path], Path]:
    """The page state on ``tmp/sounds`` with the split 'evaluation'; also returns the clips and a secret file
    outside the folder that ``sounds/link.wav`` points to."""
    run_dir = tmp / "runs" / "r"
    conf = tiny_conf(tmp / "work", run_dir)
    make_run_dir(run_dir, conf)
    folder = tmp / "sounds"
    files = write_clips(folder)
    secret = tmp / "secret.wav"
    sf.write(secret, tone(440, 16000), 16000)
    (folder / "link.wav").symlink_to(secret)
    rows = [{"tid": f"t{i}", "fid": rel, "fname": Path(rel).name, "raw_text": q, "text": q}
            for i, (q, rel) in enumerate(CAPTIONS.items())]
    rows.append({"tid": "t9", "fid": "x", "fname": "not_here.wav", "raw_text": "gone", "text": "gone"})
    write_rows(tmp / "work" / "evaluation_text.csv", rows, TEXT_COLUMNS)
    retriever = Retriever.from_run(run_dir, device="cpu")
    state = open_page(retriever, lambda: retriever.index_folder(folder, progress=False), str(folder),
                      split="evaluation", max_upload_mb=max_upload_mb)
    fake_text(retriever)
    return state, files, secret
