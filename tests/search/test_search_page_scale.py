"""The listening page on large indexes: folder and duration filters, spectrogram thumbnails, paged file lists."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import test_search_page
from PIL import Image
from test_search_page import get_json, request

import utils.search.thumbs as thumbs_code

page = test_search_page.page  # the module's served tiny index (a fixture)
DURATIONS = {"low.wav": 1.5, "high.wav": 1.5, "noise.flac": 1.5, "sub/chirp.wav": 2.0, "sub/mid.ogg": 1.5,
             "bass.wav": 3.0, "buzz.wav": 1.5, "sub/hum.wav": 2.5}  # as page_setup writes them


def paths_of(body: dict) -> list[str]:
    return [r["path"] for r in body["results"]]


def test_folder_and_duration_filters_restrict_the_ranking(page):
    url, state, files, _ = page
    for rel, seconds in DURATIONS.items():  # the durations the index stored are the files' own
        assert sf.info(str(files[rel])).duration == pytest.approx(seconds, abs=1e-3)
    _, everything = get_json(url, "/api/search?q=a+low+hum&k=20")
    ranked = paths_of(everything)
    _, sub = get_json(url, "/api/search?q=a+low+hum&k=20&folder=sub")
    assert paths_of(sub) == [p for p in ranked if p.startswith("sub/")] and len(paths_of(sub)) == 3
    _, long = get_json(url, "/api/search?q=a+low+hum&k=20&min_s=2")
    assert paths_of(long) == [p for p in ranked if DURATIONS[p] >= 2]
    _, both = get_json(url, "/api/search?q=a+low+hum&k=20&folder=sub/&min_s=1.9&max_s=2.2")
    assert paths_of(both) == ["sub/chirp.wav"]
    _, like = get_json(url, "/api/like?path=bass.wav&k=20&max_s=1.6")
    assert sorted(paths_of(like)) == sorted(p for p, s in DURATIONS.items() if s <= 1.6)
    for bad in ["min_s=x", "min_s=3&max_s=2", "max_s=-1"]:
        status, body = get_json(url, f"/api/search?q=a&{bad}")
        assert status == 400 and "error" in body


def test_files_and_folders_are_paged(page):
    url, state, _, _ = page
    _, folders = get_json(url, "/api/folders")
    assert {f["folder"]: f["files"] for f in folders["folders"]} == {"": 5, "sub": 3}
    seen = []
    for offset in range(0, 8, 3):
        _, body = get_json(url, f"/api/files?offset={offset}&limit=3")
        assert body["total"] == 8 and len(body["files"]) == min(3, 8 - offset)
        seen += [f["path"] for f in body["files"]]
    assert sorted(seen) == sorted(DURATIONS)
    _, sub = get_json(url, "/api/files?folder=sub&limit=100")
    assert sub["total"] == 3 and {f["duration"] for f in sub["files"]} == {2.0, 1.5, 2.5}
    assert get_json(url, "/api/files?limit=100000")[0] == 400


def brightness_rows(png: bytes) -> np.ndarray:
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float32)  # (40, 160)
    return image.mean(axis=1)  # (40,) top row first


def test_thumbnails_show_the_sound_and_are_cached(page):
    url, state, _, _ = page
    status, headers, bass = request(url, "GET", "/thumb/bass.wav")
    assert status == 200 and headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(bass)).size == (160, 40)
    _, _, high = request(url, "GET", "/thumb/high.wav")
    low_rows, high_rows = brightness_rows(bass), brightness_rows(high)
    # An 80 Hz tone lights the bottom rows, a 3 kHz tone rows far higher up.
    assert int(np.argmax(low_rows)) > 30 and int(np.argmax(high_rows)) < int(np.argmax(low_rows)) - 10
    cached = list(state.thumbs.folder.rglob("*.png"))
    assert len(cached) == 2 and bass in {p.read_bytes() for p in cached}
    assert request(url, "GET", "/thumb/broken.wav")[0] == 404  # skipped files are not indexed
    assert request(url, "GET", "/thumb/../secret.wav")[0] in (400, 404)


def test_a_slow_thumbnail_never_blocks_a_search(page, monkeypatch):
    url, state, _, _ = page
    original = thumbs_code.thumbnail_png
    started = threading.Event()

    def slow(path):
        started.set()
        time.sleep(3)
        return original(path)

    monkeypatch.setattr(thumbs_code, "thumbnail_png", slow)
    thread = threading.Thread(target=request, args=(url, "GET", "/thumb/buzz.wav"))
    thread.start()
    assert started.wait(10)
    t = time.perf_counter()
    status, body = get_json(url, "/api/search?q=a+rising+chirp&k=3")
    assert status == 200 and paths_of(body)[0] == "sub/chirp.wav" and time.perf_counter() - t < 2.5
    thread.join()
