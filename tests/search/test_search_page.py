"""The listening page's API (no browser), Retriever.search_audio / index_files and search.py --like/--files/--json."""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np
import pytest
import soundfile as sf
from builders import load_search, make_run_dir, tiny_conf, tone, write_folder
from page_setup import CAPTIONS, build_page

from utils.base.errors import PipelineError
from utils.features.logmel import logmel
from utils.search.page import BackgroundServer
from utils.search.page_state import open_page
from utils.search.retriever import Retriever


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """(url, state, clips, secret file outside the folder), served for the whole module; uploads over 0.2 MB refused."""
    tmp = tmp_path_factory.mktemp("page")
    state, files, secret = build_page(tmp, max_upload_mb=0.2)
    with BackgroundServer(state) as url:
        yield url, state, files, secret


@pytest.fixture
def setup(tmp_path):
    """test_search.py's run and five-clip folder: (run dir, folder, {relative path: file})."""
    run_dir = tmp_path / "runs" / "r"
    make_run_dir(run_dir, tiny_conf(tmp_path / "work", run_dir))
    return run_dir, tmp_path / "sounds", write_folder(tmp_path / "sounds")


def request(url: str, method: str, target: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One raw HTTP request: ``target`` is sent as is (no client-side normalisation of ``..``)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        headers = headers or {}
        conn.request(method, target, body=body, headers=headers, encode_chunked="Transfer-Encoding" in headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def get_json(url: str, target: str) -> tuple[int, dict]:
    status, headers, body = request(url, "GET", target)
    assert headers["content-type"].startswith("application/json"), (target, headers)
    return status, json.loads(body)


def assert_refused(status: int, body: bytes, code: int, words: str) -> None:
    assert status == code, (status, body)
    message = json.loads(body)["error"]
    assert words in message and "Traceback" not in message


# --------------------------------------------------------------------------------------------
# Searching


def test_text_search_returns_ranked_clips_with_playable_urls(page):
    url, state, files, _ = page
    for caption, rel in CAPTIONS.items():
        status, body = get_json(url, f"/api/search?q={quote(caption)}&k=3")
        assert status == 200 and body["query"] == caption and body["kind"] == "text"
        results = body["results"]
        assert [r["rank"] for r in results] == [1, 2, 3] and results[0]["path"] == rel
        assert results[0]["score"] == pytest.approx(1.0, abs=1e-3)
        assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
        assert results[0]["duration"] == pytest.approx(sf.info(files[rel]).duration, abs=0.01)
        status, headers, audio = request(url, "GET", results[0]["url"])
        assert status == 200 and audio == files[rel].read_bytes() and headers["content-type"].startswith("audio/")


def test_audio_is_streamed_with_range_requests(page):
    url, _, files, _ = page
    status, headers, body = request(url, "GET", "/audio/sub/chirp.wav", headers={"Range": "bytes=0-99"})
    assert status == 206 and body == files["sub/chirp.wav"].read_bytes()[:100]
    assert headers["content-range"].startswith("bytes 0-99/")


def test_more_like_this_finds_the_clip_itself_first(page):
    url, state, _, _ = page
    for rel in state.retriever.index.paths:
        status, body = get_json(url, f"/api/like?path={quote(rel)}&k=4")
        assert status == 200 and body["results"][0]["path"] == rel
        assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_upload_searches_by_the_clip_and_leaves_no_file(page):
    url, state, files, _ = page
    data = files["sub/mid.ogg"].read_bytes()
    status, _, body = request(url, "POST", "/api/upload?name=query.ogg&k=3", body=data)
    assert status == 200, body
    assert json.loads(body)["results"][0]["path"] == "sub/mid.ogg"
    assert os.listdir(state.upload_dir.name) == []


def test_evaluation_view_flags_the_true_clip_and_its_rank(page):
    url, state, _, _ = page
    status, body = get_json(url, "/api/captions")
    assert status == 200 and body["split"] == "evaluation" and body["left_out"] == 1  # not_here.wav
    assert [c["text"] for c in body["captions"]] == list(CAPTIONS)
    status, body = get_json(url, "/api/eval?caption=3&k=2")
    assert status == 200 and body["true_path"] == "sub/chirp.wav" and body["true_rank"] == 1
    assert [r["true"] for r in body["results"]] == [True, False]
    # A caption whose clip ranks low: its rank among all files is still reported.
    scores = state.retriever.index.embeddings @ state.retriever.embed_text(["a low hum"])[0]
    state.captions[0].row, saved = int(np.argmin(scores)), state.captions[0].row
    try:
        status, body = get_json(url, "/api/eval?caption=0&k=3")
        assert body["true_rank"] == len(state.retriever.index) and not any(r["true"] for r in body["results"])
    finally:
        state.captions[0].row = saved


def test_status_reports_indexed_and_skipped_files(page):
    url, state, _, _ = page
    status, body = get_json(url, "/api/status")
    assert status == 200 and body["files"] == 8 and body["split"] == "evaluation" and body["captions"] == 5
    reasons = {s["path"]: s["reason"] for s in body["skipped"]}
    assert set(reasons) == {"broken.wav", "link.wav"}
    assert "cannot read audio" in reasons["broken.wav"] and "outside the indexed folder" in reasons["link.wav"]
    assert body["refreshed"].endswith("+00:00") and "added" in body["last_refresh"]


def test_page_is_self_contained(page):
    url, _, _, _ = page
    status, headers, html = request(url, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    texts = [html.decode()] + [request(url, "GET", f"/static/{n}")[2].decode() for n in ("page.js", "page.css")]
    for text in texts:  # nothing fetched from another host: no http(s):// or protocol-relative URL
        assert "http://" not in text and "https://" not in text and 'src="//' not in text and "@import" not in text


# --------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("target, code", [
    ("/audio/../secret.wav", 400),
    ("/audio/%2e%2e/secret.wav", 400),
    ("/audio/sub/../../secret.wav", 400),
    ("/audio/%2Fetc%2Fpasswd", 400),
    ("/audio//etc/passwd", 400),
    ("/audio/link.wav", 404),  # a symlink in the folder pointing out of it: left out of the index
    ("/audio/notes.txt", 404),  # inside the folder but not an indexed audio file
    ("/audio/broken.wav", 404),  # skipped as unreadable
    ("/api/like?path=../secret.wav", 400),
    ("/api/like?path=" + quote("/etc/passwd"), 400),
    ("/api/like?path=link.wav", 404),
])
def test_files_outside_the_index_are_refused(page, target, code):
    url, _, _, secret = page
    status, headers, body = request(url, "GET", target)
    assert status == code, (target, status, body)
    assert secret.read_bytes()[:64] not in body and "error" in json.loads(body)


def test_a_file_swapped_for_a_link_out_after_indexing_is_refused(page):
    url, _, files, secret = page
    clip = files["buzz.wav"]
    saved = clip.read_bytes()
    clip.unlink()
    clip.symlink_to(secret)
    try:
        for target in ["/audio/buzz.wav", "/api/like?path=buzz.wav"]:
            status, _, body = request(url, "GET", target)
            assert_refused(status, body, 403, "outside the indexed folder")
    finally:
        clip.unlink()
        clip.write_bytes(saved)


def test_oversized_uploads_are_refused(page):
    url, state, _, _ = page
    big = np.zeros(300_000, dtype=np.int8).tobytes()  # 0.3 MB > the 0.2 MB limit
    status, _, body = request(url, "POST", "/api/upload?name=big.wav", body=big)
    assert_refused(status, body, 413, "limit")

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(10):
            yield big[:50_000]

    status, _, body = request(url, "POST", "/api/upload?name=big.wav", body=chunks(),
                              headers={"Transfer-Encoding": "chunked"})
    assert_refused(status, body, 413, "limit")
    assert os.listdir(state.upload_dir.name) == []


@pytest.mark.parametrize("target, body, code, words", [
    ("/api/upload?name=x.wav", b"", 400, "empty"),
    ("/api/upload?name=x.exe", b"MZ" * 10, 415, "audio file"),
    ("/api/upload?name=x.wav", b"RIFF not audio at all" * 5, 400, "cannot read audio"),
    ("/api/upload?name=x.wav&k=0", b"RIFF", 400, "k must be between"),
])
def test_bad_uploads_get_a_message(page, target, body, code, words):
    url, state, _, _ = page
    status, _, answer = request(url, "POST", target, body=body)
    assert_refused(status, answer, code, words)
    assert os.listdir(state.upload_dir.name) == []


@pytest.mark.parametrize("target, code, words", [
    ("/api/search?q=", 400, "empty"),
    ("/api/search?q=%20%20", 400, "empty"),
    ("/api/search", 400, "empty"),
    ("/api/search?q=dog&k=abc", 400, "whole number"),
    ("/api/search?q=dog&k=100000", 400, "between"),
    ("/api/eval?caption=99", 400, "caption must be"),
    ("/api/eval?caption=-1", 400, "caption must be"),
    ("/static/../search_page.py", 404, "Not Found: GET"),
    ("/nowhere", 404, "Not Found: GET /nowhere"),
    ("/static/secret.txt", 404, "no static file"),
])
def test_bad_requests_get_4xx_with_a_message(page, target, code, words):
    url, _, _, _ = page
    status, _, body = request(url, "GET", target)
    assert_refused(status, body, code, words)


def test_unexpected_errors_are_500_without_a_traceback(page, monkeypatch):
    url, state, _, _ = page

    def boom(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(state, "results", boom)
    status, _, body = request(url, "GET", "/api/search?q=dog")
    assert status == 500 and b"secret internal detail" not in body and b"Traceback" not in body
    assert "internal error" in json.loads(body)["error"]


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    state, _, _ = build_page(tmp_path)
    capsys.readouterr()
    with pytest.raises(PipelineError, match="audio folder not found"):
        open_page(state.retriever, lambda: state.retriever.index_folder(tmp_path / "nope"), "nope")
    search = load_search()
    run = str(tmp_path / "runs" / "r")
    assert search.main(["--run", run, "--audio", str(tmp_path / "nope"), "--serve", "--port", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: audio folder not found")
    # The folder vanishes while the page runs: a refresh answers 409 with the reason, searches go on.
    moved = tmp_path / "moved"
    with BackgroundServer(state) as url:
        sf.write(tmp_path / "sounds" / "sub" / "new.wav", tone(5000, 16000), 16000)  # a refresh picks it up
        status, _, body = request(url, "POST", "/api/refresh")
        assert status == 200 and json.loads(body)["files"] == 9 and "1 added" in json.loads(body)["last_refresh"]
        status, body = get_json(url, "/api/like?path=sub/new.wav&k=1")
        assert status == 200 and body["results"][0]["path"] == "sub/new.wav"
        (tmp_path / "sounds").rename(moved)
        status, _, body = request(url, "POST", "/api/refresh")
        assert_refused(status, body, 409, "audio folder not found")
        status, body = get_json(url, "/api/search?q=" + quote("a low hum"))
        assert status == 200 and body["results"][0]["path"] == "low.wav"


def test_serve_refuses_a_split_that_is_not_the_folder(page, tmp_path, capsys):
    _, state, _, _ = page  # its run has the split 'evaluation', whose clips are not in `other`
    search = load_search()
    other = tmp_path / "other"
    other.mkdir()
    sf.write(other / "zzz.wav", tone(600, 16000), 16000)
    argv = ["--run", str(state.retriever.run.run_dir), "--audio", str(other), "--serve", "--split", "evaluation"]
    assert search.main(argv) == 2
    assert "none of the clips of" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Python API and script modes


def test_search_audio_accepts_paths_waveforms_and_logmels(setup):
    run_dir, folder, files = setup
    r = Retriever.from_run(run_dir, device="cpu")
    r.index_folder(folder, progress=False)
    path = files["sub/chirp.wav"]
    y, sr = sf.read(path, dtype="float32")
    want = str(path.resolve())
    for item in [path, str(path), (y, sr), logmel(y, sr)]:
        results = r.search_audio(item, k=3)
        assert len(results) == 3 and results[0][0] == want and results[0][1] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(PipelineError, match="sample rate"):
        r.search_audio(y, k=3)
    with pytest.raises(PipelineError, match="k must be"):
        r.search_audio(path, k=0)


def test_index_files_indexes_only_the_listed_files(setup, capsys):
    run_dir, folder, files = setup
    r = Retriever.from_run(run_dir, device="cpu")
    listed = [files["low.wav"], files["sub/chirp.wav"], folder / "missing.wav"]
    update = r.index_files(listed, progress=False)
    assert r.index.folder == folder.resolve() and r.index.paths == ["low.wav", "sub/chirp.wav"]
    assert update.added == ["low.wav", "sub/chirp.wav"] and update.missing == [str(folder / "missing.wav")]
    assert "listed audio file not found" in capsys.readouterr().err
    full = Retriever.from_run(run_dir, device="cpu")
    full.index_folder(folder, progress=False)  # the same vectors as the folder index, cached apart from it
    for rel in r.index.paths:
        np.testing.assert_allclose(r.index.embeddings[r.index.paths.index(rel)],
                                   full.index.embeddings[full.index.paths.index(rel)], atol=1e-6)
    assert len(list((run_dir / "search_index").glob("*/meta.json"))) == 2
    again = r.index_files(listed[:2] + [files["high.wav"]], progress=False)  # grows: only the new file embedded
    assert again.added == ["high.wav"] and again.reused == 2
    with pytest.raises(PipelineError, match="none of the 1 listed"):
        r.index_files([folder / "nope.wav"])


def test_search_cli_like_files_and_json(setup, tmp_path, capsys):
    run_dir, folder, files = setup
    listing = tmp_path / "list.txt"
    listing.write_text("# my clips\nsounds/low.wav\n\nsounds/sub/chirp.wav\n" + f"{files['noise.flac']}\n")
    search = load_search()
    argv = ["--run", str(run_dir), "--files", str(listing), "-k", "2", "--json", "--like", str(files["noise.flac"])]
    assert search.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1 and out[0]["query"] == str(files["noise.flac"]) and out[0]["kind"] == "audio"
    assert [r["rank"] for r in out[0]["results"]] == [1, 2]
    assert out[0]["results"][0]["path"] == str(files["noise.flac"].resolve())
    assert out[0]["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert {Path(r["path"]).name for r in out[0]["results"]} <= {"low.wav", "chirp.wav", "noise.flac"}

    assert search.main(["--run", str(run_dir), "--audio", str(folder), "--like", str(files["high.wav"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"query: sounds like {files['high.wav']}" and lines[2].split()[:3] == ["1", "1.0000", "high.wav"]


@pytest.mark.parametrize("extra, words", [
    ([], "no query given"),
    (["--like", "nope.wav"], "query clip not found"),
    (["--serve", "a dog"], "--serve takes no queries"),
    (["--split", "evaluation", "a dog"], "add --serve"),
])
def test_search_cli_mode_errors(setup, extra, words, capsys):
    run_dir, folder, _ = setup
    assert load_search().main(["--run", str(run_dir), "--audio", str(folder), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err


def test_file_list_errors(setup, tmp_path, capsys):
    run_dir, _, _ = setup
    search = load_search()
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    for listing, words in [(tmp_path / "nope.txt", "file list not found"), (empty, "names no files")]:
        assert search.main(["--run", str(run_dir), "--files", str(listing), "a dog"]) == 2
        assert words in capsys.readouterr().err


def test_page_with_faiss_gives_the_exact_results(page):
    pytest.importorskip("faiss")
    url, state, _, _ = page
    targets = [f"/api/search?q={quote('a rising chirp')}&k=5", "/api/like?path=low.wav&k=5"]
    exact = [get_json(url, t)[1]["results"] for t in targets]
    state.use_faiss = True
    try:
        approx = [get_json(url, t)[1]["results"] for t in targets]
    finally:
        state.use_faiss = False
    for e, a in zip(exact, approx, strict=True):
        assert [r["path"] for r in e] == [r["path"] for r in a]
        assert [r["score"] for r in e] == pytest.approx([r["score"] for r in a], abs=1e-3)
