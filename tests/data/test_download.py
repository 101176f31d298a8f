"""preprocessing/00_download_clotho.py against a local HTTP server (127.0.0.1, with Range), never the internet.

The server offers small 7z archives (made here with py7zr) of wav files with Clotho's odd names, and caption and
metadata CSVs, under the real Clotho file names; hashes come in with --checksums, the server with --mirror.
Kills are real: a forked child is SIGKILLed mid-download and mid-extraction, then the command is rerun.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import sys
import threading
import time
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import py7zr
import pytest
import soundfile as sf
from builders import load_script
from forking import in_forked_child

import utils.data.archive_extract as archive_extract
import utils.data.download as data_download
import utils.data.http_download as http_download
from utils.base.config import load_config
from utils.base.errors import DataError
from utils.cli import call
from utils.data.clotho_files import SPLITS
from utils.data.download import Source, read_checksums
from utils.data.http_download import ChecksumError, Expected, mismatch
from utils.evaluation.baseline_report import read_metrics, report_table
from utils.pretrained.released_weights import SUMS_FILE, fetch_released

ROOT = Path(__file__).resolve().parents[2]
ARCHIVE = "clotho_audio_development.7z"
# name on disk (inside the archive) -> name in the CSVs, as Clotho spells them differently
CLIPS = {
    "development": {"Birds, chirping (morning) #2.wav": "Birds, chirping (morning) #2.wav",
                    "Rain &amp; thunder.wav": "Rain & thunder.wav",
                    "Car  passing by .wav": "Car passing by.wav"},
    "validation": {"Door #1, slam (loud).wav": "Door #1, slam (loud).wav",
                   "Tom &amp; Jerry  chase.wav": "Tom & Jerry chase.wav"},
    "evaluation": {"Wind (strong), trees.wav": "Wind (strong), trees.wav",
                   " Ambience Birds.wav": " Ambience Birds.wav"},
}


DOWNLOAD = load_script("preprocessing/00_download_clotho.py")
STAGE1 = load_script("preprocessing/01_clotho_dataset.py")
REPORT = load_script("postprocessing/05_baseline_report.py")


# --------------------------------------------------------------------------------------------
# The published files, made small
# --------------------------------------------------------------------------------------------


def _wav_bytes(seed: int) -> bytes:
    noise = np.random.default_rng(seed).uniform(-0.5, 0.5, 2000).astype(np.float32)  # 0.25 s at 8 kHz
    buffer = io.BytesIO()
    sf.write(buffer, noise, 8000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _csv(rows: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def make_files(folder: Path) -> dict[str, bytes]:
    """Every file of the three Clotho splits under its real name: ``{name: bytes}``."""
    files, seed = {}, 0
    for split, clips in CLIPS.items():
        archive = folder / f"clotho_audio_{split}.7z"
        with py7zr.SevenZipFile(archive, "w") as z:
            for disk_name in clips:
                seed += 1
                z.writestr(_wav_bytes(seed), f"{split}/{disk_name}")
        files[archive.name] = archive.read_bytes()
        files[f"clotho_captions_{split}.csv"] = _csv(
            [{"file_name": name, **{f"caption_{i}": f"a sound {i} of {name[:-4]}" for i in range(1, 6)}}
             for name in clips.values()])
        files[f"clotho_metadata_{split}.csv"] = _csv(
            [{"file_name": name, "keywords": "test", "sound_id": str(k)} for k, name in enumerate(clips.values())])
    return files


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------

Request = namedtuple("Request", "method name range")


class Handler(BaseHTTPRequestHandler):
    """GET / HEAD of ``server.files``, with ``Range: bytes=N-``; ``server.faults[name]`` spoils one GET."""

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        name = unquote(self.path.lstrip("/"))
        self.server.log.append(Request(self.command, name, self.headers.get("Range")))
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        fault = self.server.faults.pop(name, None) if body else None
        if fault == ("500",):
            self.send_error(500)
            return
        start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") and self.server.ranges else 0
        if start >= len(data) > 0:
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if not body:
            return
        payload = data[start:]
        if fault and fault[0] in ("drop", "hang"):
            self.wfile.write(payload[:fault[1]])
            self.wfile.flush()
            if fault[0] == "hang":
                self.server.release.wait(20)
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, bytes]:
    return make_files(tmp_path_factory.mktemp("zenodo"))


@pytest.fixture
def server(tmp_path, published):
    files = dict(published)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.files, httpd.faults, httpd.log, httpd.release = files, {}, [], threading.Event()
    httpd.ranges = True  # False: a server that ignores Range and always sends the whole file
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    (tmp_path / "md5sums.txt").write_text("".join(f"{md5(d)}  {n}\n" for n, d in files.items()))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()


def argv(tmp_path: Path, srv, *extra: str) -> list[str]:
    return ["--conf", str(ROOT / "conf.yaml"), "--set", f"data.dataset_dir={tmp_path / 'Clotho'}",
            "--checksums", str(tmp_path / "md5sums.txt"), "--mirror", srv.url, "--no-progress", *extra]


def gets(srv, name: str) -> list[Request]:
    return [r for r in srv.log if r.method == "GET" and r.name == name]


def in_child(args: list[str], patch=None) -> int:
    """Run the download script in a forked child (``patch()`` first); its exit status, or -signal."""
    def body() -> int:
        if patch:
            patch()
        return call(DOWNLOAD.main, DOWNLOAD.parser, args)

    return in_forked_child(body)


def wavs_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.suffix == ".wav"}


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_download_extract_then_stage1_reads_every_clip(tmp_path, server, capsys):
    assert call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server)) == 0
    data = tmp_path / "Clotho"
    for split, clips in CLIPS.items():
        assert wavs_in(data / split) == set(clips)  # the odd names, exactly as in the archive
        assert (data / f"clotho_captions_{split}.csv").read_bytes() == server.files[f"clotho_captions_{split}.csv"]
    assert not list((data / "archives").iterdir())  # archives deleted once extracted, no .part left
    assert call(STAGE1.main, STAGE1.parser, ["--conf", str(ROOT / "conf.yaml"), "--set",
                                             f"data.dataset_dir={data}"]) == 0
    for split, clips in CLIPS.items():
        audio = list(csv.DictReader(open(data / f"{split}_audio.csv", encoding="utf-8")))
        text = list(csv.DictReader(open(data / f"{split}_text.csv", encoding="utf-8")))
        assert {r["fname"] for r in audio} == set(clips) and len(text) == 5 * len(clips)
        assert list(csv.DictReader(open(data / f"{split}_skipped.csv", encoding="utf-8"))) == []
    server.log.clear()
    capsys.readouterr()
    assert call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server)) == 0  # a rerun fetches nothing
    assert [r for r in server.log if r.method == "GET"] == []
    assert capsys.readouterr().out.count("is complete") == 3


def test_kill_mid_download_then_rerun_resumes_with_range(tmp_path, server):
    server.faults[ARCHIVE] = ("hang", 4096)  # 4096 bytes, then the connection stalls until the kill
    part = tmp_path / "Clotho" / "archives" / f"{ARCHIVE}.part"
    pid = os.fork()
    if pid == 0:
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        os._exit(call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server, "--splits", "development")))
    deadline = time.monotonic() + 20
    while not (part.exists() and part.stat().st_size >= 4096) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    server.release.set()
    assert part.stat().st_size == 4096
    assert not (tmp_path / "Clotho" / "archives" / ARCHIVE).exists() and not (tmp_path / "Clotho" / "development").exists()

    assert call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server, "--splits", "development",
                                                     "--keep-archives")) == 0
    assert gets(server, ARCHIVE)[-1].range == "bytes=4096-"
    archive = (tmp_path / "Clotho" / "archives" / ARCHIVE).read_bytes()
    assert md5(archive) == md5(server.files[ARCHIVE])
    assert wavs_in(tmp_path / "Clotho" / "development") == set(CLIPS["development"])


def test_server_drops_mid_file_then_rerun_resumes(tmp_path, server, capsys):
    server.faults[ARCHIVE] = ("drop", 5000)
    assert call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server, "--splits", "development")) == 2
    err = capsys.readouterr().err
    assert f"after 5,000 of {len(server.files[ARCHIVE]):,} bytes" in err and "rerun the same command to resume" in err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert (tmp_path / "Clotho" / "archives" / f"{ARCHIVE}.part").stat().st_size == 5000
    assert call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server, "--splits", "development")) == 0
    assert gets(server, ARCHIVE)[-1].range == "bytes=5000-"
    assert wavs_in(tmp_path / "Clotho" / "development") == set(CLIPS["development"])


@pytest.mark.parametrize("ranges", [True, False])
def test_resume_of_a_complete_part_or_from_a_server_without_range(tmp_path, server, ranges):
    part = tmp_path / "Clotho" / "archives" / f"{ARCHIVE}.part"
    part.parent.mkdir(parents=True)
    data = server.files[ARCHIVE]
    part.write_bytes(data if ranges else data[:3000])  # killed after the last byte / a server without Range
    server.ranges = ranges
    assert call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server, "--splits", "development",
                                                     "--keep-archives")) == 0
    assert gets(server, ARCHIVE)[-1].range == (f"bytes={len(data)}-" if ranges else "bytes=3000-")
    assert (tmp_path / "Clotho" / "archives" / ARCHIVE).read_bytes() == data  # 416: verified as is; 200: refetched
    assert wavs_in(tmp_path / "Clotho" / "development") == set(CLIPS["development"])


def test_server_error_500_is_one_line_and_rerun_finishes(tmp_path, server, capsys):
    server.faults["clotho_captions_development.csv"] = ("500",)
    assert call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server, "--splits", "development")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "HTTP 500" in err and "clotho_captions_development.csv" in err and "rerun the same command" in err
    assert not (tmp_path / "Clotho" / "clotho_captions_development.csv").exists()
    assert call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server, "--splits", "development")) == 0


def test_corrupted_byte_is_refused_and_nothing_has_the_final_name(tmp_path, server, capsys):
    good = server.files[ARCHIVE]
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    server.files[ARCHIVE] = bytes(bad)
    assert call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server, "--splits", "development")) == 2
    err = capsys.readouterr().err
    assert f"MD5 {md5(bytes(bad))}, expected {md5(good)}" in err and ARCHIVE in err and "Rerun" in err
    archives = tmp_path / "Clotho" / "archives"
    assert sorted(p.name for p in archives.iterdir()) == [f"{ARCHIVE}.part.bad"]  # aside; no final, no .part
    assert not (tmp_path / "Clotho" / "development").exists()
    server.files[ARCHIVE] = good  # the mirror is repaired: the rerun fetches it afresh
    assert call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server, "--splits", "development")) == 0
    assert wavs_in(tmp_path / "Clotho" / "development") == set(CLIPS["development"])


def test_damaged_file_already_in_place_is_moved_aside_then_fetched_again(tmp_path, server, capsys):
    args = argv(tmp_path, server, "--splits", "development")
    assert call(DOWNLOAD.main, DOWNLOAD.parser, args) == 0
    table = tmp_path / "Clotho" / "clotho_captions_development.csv"
    table.write_bytes(table.read_bytes().replace(b"sound", b"s0und"))
    assert call(DOWNLOAD.main, DOWNLOAD.parser, args) == 2
    err = capsys.readouterr().err
    assert f"MD5 {md5(table.with_suffix('.csv.bad').read_bytes())}, expected {md5(server.files[table.name])}" in err
    assert not table.exists()
    assert call(DOWNLOAD.main, DOWNLOAD.parser, args) == 0
    assert table.read_bytes() == server.files[table.name]


def test_from_folder_needs_no_server(tmp_path, server, monkeypatch, capsys):
    given = tmp_path / "browser_downloads"
    given.mkdir()
    for name, data in server.files.items():
        (given / name).write_bytes(data)
    server.shutdown()

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(http_download, "urlopen", no_network)
    args = ["--conf", str(ROOT / "conf.yaml"), "--set", f"data.dataset_dir={tmp_path / 'Clotho'}",
            "--checksums", str(tmp_path / "md5sums.txt"), "--from", str(given), "--no-progress"]
    assert call(DOWNLOAD.main, DOWNLOAD.parser, args) == 0
    for split, clips in CLIPS.items():
        assert wavs_in(tmp_path / "Clotho" / split) == set(clips)
    assert sorted(p.name for p in given.iterdir()) == sorted(server.files)  # the user's files are left alone

    (given / "clotho_captions_validation.csv").write_bytes(b"file_name\nbroken\n")  # a bad copy is still refused
    assert call(DOWNLOAD.main, DOWNLOAD.parser, args) == 2
    err = capsys.readouterr().err
    assert "clotho_captions_validation.csv (from --from)" in err and "left in place" in err


def test_kill_during_extraction_leaves_no_split_and_rerun_succeeds(tmp_path, server):
    data = tmp_path / "Clotho"

    def die_after_first_wav():
        def report_end(self, path, wrote_bytes):
            os.kill(os.getpid(), signal.SIGKILL)
        archive_extract._Progress.report_end = report_end

    args = argv(tmp_path, server, "--splits", "development")
    assert in_child(args, die_after_first_wav) == -signal.SIGKILL
    work = data / ".development.extracting"
    assert work.is_dir() and any(work.rglob("*.wav"))  # it was killed mid-extraction
    assert not (data / "development").exists() and not (data / ".development.complete.json").exists()
    with pytest.raises(DataError, match="audio folder not found"):  # stage 1 sees no split, not a partial one
        STAGE1.build_split(load_config(ROOT / "conf.yaml", [f"data.dataset_dir={data}"]), "development")

    assert call(DOWNLOAD.main, DOWNLOAD.parser, args) == 0
    assert not work.exists() and wavs_in(data / "development") == set(CLIPS["development"])
    assert len(gets(server, ARCHIVE)) == 1  # the verified archive was kept for the rerun, not fetched again


def test_extracted_set_must_equal_the_listing(tmp_path, server, monkeypatch, capsys):
    real = py7zr.SevenZipFile.extractall

    def loses_a_file(self, path=None, **kwargs):  # as if a member were silently not written
        real(self, path=path, **kwargs)
        next(Path(path).rglob("*.wav")).unlink()

    monkeypatch.setattr(py7zr.SevenZipFile, "extractall", loses_a_file)
    assert call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server, "--splits", "development")) == 2
    err = capsys.readouterr().err
    assert "gave 2 wav files for 3 listed: 1 missing" in err and "nothing was put at" in err
    data = tmp_path / "Clotho"
    assert not (data / "development").exists() and not (data / ".development.extracting").exists()
    monkeypatch.setattr(py7zr.SevenZipFile, "extractall", real)
    assert call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server, "--splits", "development")) == 0


def test_too_little_disk_space_stops_before_any_download(tmp_path, server, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(data_download.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 2000, 2000))
    assert call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server)) == 2
    err = capsys.readouterr().err
    size = {n: len(d) for n, d in server.files.items()}
    tables = sum(v for n, v in size.items() if n.endswith(".csv"))
    wavs = [int(size[f"clotho_audio_{s}.7z"] * data_download.EXTRACT_RATIO) for s in CLIPS]
    # splits in turn, each archive deleted once extracted: the last split is the fullest moment
    need = tables + sum(wavs) + size["clotho_audio_evaluation.7z"]
    assert "not enough free disk space" in err and f"needs about {data_download.human_bytes(need)}" in err
    assert "2.0 kB free" in err
    assert [r for r in server.log if r.method == "GET"] == []  # sizes were asked (HEAD), nothing fetched
    assert not (tmp_path / "Clotho" / "archives").exists()


def test_folder_from_elsewhere_is_adopted_only_when_complete(tmp_path, server, capsys):
    data = tmp_path / "Clotho"
    assert call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server, "--splits", "development")) == 0
    (data / ".development.complete.json").unlink()  # as if unpacked by hand, or killed before the marker
    server.log.clear()
    assert call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server, "--splits", "development")) == 0
    assert "already holds all 3 clips" in capsys.readouterr().out and not gets(server, ARCHIVE)
    (data / ".development.complete.json").unlink()
    (data / "development" / "Rain &amp; thunder.wav").unlink()
    assert call(DOWNLOAD.main, DOWNLOAD.parser, argv(tmp_path, server, "--splits", "development")) == 2
    err = capsys.readouterr().err
    assert "is not the complete split: 2 audio files for the 3 clips" in err and "Rain & thunder.wav" in err


def test_weights_land_at_the_configured_path(tmp_path, server):
    payload = b"not really a CNN14" * 100
    server.files["Cnn14_mAP=0.431.pth"] = payload
    with open(tmp_path / "md5sums.txt", "a") as sums:
        sums.write(f"{md5(payload)} *Cnn14_mAP=0.431.pth\n")
    target = tmp_path / "models" / "Cnn14_mAP=0.431.pth"
    args = argv(tmp_path, server, "--splits", "evaluation", "--weights", "--set",
                f"pretrained.panns_checkpoint={target}")
    assert call(DOWNLOAD.main, DOWNLOAD.parser, args) == 0
    assert target.read_bytes() == payload and gets(server, "Cnn14_mAP=0.431.pth")  # asked for URL/Cnn14_mAP%3D...


def test_released_weights_record_sha256_then_verify(tmp_path, server, capsys):
    server.files.update({"checkpoint": b"model and optimizer" * 50, "audio_encoder.pth": b"cnn14" * 80})
    folder = tmp_path / "dcase2023"
    source = Source(mirror=server.url, progress=False)
    paths = fetch_released(folder, source)
    sums = json.loads((folder / SUMS_FILE).read_text())
    assert sums["checkpoint"]["sha256"] == hashlib.sha256(server.files["checkpoint"]).hexdigest()
    assert "recorded its SHA-256" in capsys.readouterr().out
    server.log.clear()
    assert fetch_released(folder, source) == paths and server.log == []  # verified, not fetched again
    paths["audio_encoder.pth"].write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="audio_encoder.pth is not the published file .*SHA-256"):
        fetch_released(folder, source)
    assert (folder / "audio_encoder.pth.bad").is_file() and not (folder / "audio_encoder.pth").exists()


def test_released_flag_fetches_records_and_imports_once(tmp_path, server, monkeypatch, capsys):
    server.files.update({"checkpoint": b"model and optimizer" * 50, "audio_encoder.pth": b"cnn14" * 80})
    imported = []

    def fake_import(conf, checkpoint, run_dir):  # the import itself: tests/test_import_dcase2023.py
        imported.append(Path(checkpoint).read_bytes())
        best = Path(run_dir) / "checkpoints" / "best.pt"
        best.parent.mkdir(parents=True)
        best.write_bytes(b"")
        return best

    monkeypatch.setattr(DOWNLOAD, "import_checkpoint", fake_import)
    run_dir = tmp_path / "runs" / "dcase2023"
    args = argv(tmp_path, server, "--splits", "evaluation", "--released", "--released-dir", str(tmp_path / "dcase"),
                "--released-run", str(run_dir))
    assert call(DOWNLOAD.main, DOWNLOAD.parser, args) == 0
    assert imported == [server.files["checkpoint"]] and (tmp_path / "dcase" / SUMS_FILE).is_file()
    capsys.readouterr()
    server.log.clear()
    assert call(DOWNLOAD.main, DOWNLOAD.parser, args) == 0  # verified against the record, not fetched nor imported
    assert "already imported; skipped" in capsys.readouterr().out and len(imported) == 1
    assert [r for r in server.log if r.method == "GET"] == []
    (run_dir / "checkpoints" / "best.pt").unlink()  # an import killed half-way is not mistaken for done
    assert call(DOWNLOAD.main, DOWNLOAD.parser, args) == 2
    assert "exists without checkpoints/best.pt" in capsys.readouterr().err


def test_checksums_file_format(tmp_path):
    path = tmp_path / "sums.md5"
    path.write_text(f"# made by md5sum\n{'a' * 32}  {ARCHIVE}\n\n{'B' * 32} *Cnn14_mAP=0.431.pth\n")
    assert read_checksums(path) == {ARCHIVE: "a" * 32, "Cnn14_mAP=0.431.pth": "b" * 32}
    path.write_text(f"{'a' * 31}  {ARCHIVE}\n")
    with pytest.raises(DataError, match="line 1 is not '<md5>  <file name>'"):
        read_checksums(path)


def test_published_facts_and_checks():
    assert SPLITS["development"].archive.md5 == "c8b05bc7acdb13895bb3c6a29608667e"
    assert SPLITS["development"].archive.url == f"https://zenodo.org/record/4783391/files/{ARCHIVE}?download=1"
    assert data_download.PANNS.url == "https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1"
    assert Source(mirror="http://m/x/").url(data_download.PANNS) == "http://m/x/Cnn14_mAP%3D0.431.pth"


def test_mismatch_checks_size_md5_and_sha256(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    sha = hashlib.sha256(b"abc").hexdigest()
    assert mismatch(path, Expected(md5=md5(b"abc"), sha256=sha, size=3)) is None
    assert mismatch(path, Expected(size=4)) == "size 3 bytes, expected 4"
    assert mismatch(path, Expected(md5=md5(b"abc"), sha256="0" * 64)).startswith(f"SHA256 {sha}")


def test_baseline_report_with_and_without_intervals(tmp_path, capsys):
    metrics = {"t2a": {"mAP@10": 0.2231, "R@1": 0.128, "R@5": 0.35, "R@10": 0.49}, "a2t": {}, "definitions": {}}
    plain = report_table(metrics, "runs/x").splitlines()
    assert plain[1].split()[1:] == ["0.223", "0.128", "0.350", "0.490"]
    assert plain[2].split()[-4:] == ["0.222", "0.130", "0.343", "0.480"]
    assert plain[3].split()[-4:] == ["+0.001", "-0.002", "+0.007", "+0.010"]
    assert "no 95% confidence intervals" in plain[4]
    metrics["ci95"] = {"t2a": {"mAP@10": [0.21, 0.236], "R@1": [0.118, 0.139], "R@5": [0.33, 0.36],
                               "R@10": [0.482, 0.51]}}
    with_ci = report_table(metrics, "runs/x")
    assert "0.223 [0.210, 0.236]" in with_ci and "0.490 [0.482, 0.510]" in with_ci
    assert with_ci.splitlines()[4].split()[-4:] == ["yes", "yes", "yes", "no"]  # 0.480 < 0.482

    run = tmp_path / "run"
    with pytest.raises(DataError, match="run postprocessing/01_xmodal_scores.py"):
        read_metrics(run)
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "evaluation_metrics.json").write_text(json.dumps(metrics))
    assert read_metrics(run)["t2a"]["R@1"] == 0.128
    assert call(REPORT.main, REPORT.parser, ["--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "0.128 [0.118, 0.139]" in out and "evaluation_metrics.json" in out
