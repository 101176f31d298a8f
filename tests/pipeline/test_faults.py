"""Fault injection and hostile inputs: crafted checkpoints, kills, bad clips, bad settings, damaged files.

Every test here failed on the code before the fix it guards."""

import contextlib
import dataclasses
import io
import json
import os
import runpy
import shutil
import subprocess
import sys
import typing
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ROOT, fake_text_model, make_work_dir, write_config

from search import format_results
from utils.base.config import Config, ConfigError, load_config
from utils.base.config_checks import RANGES
from utils.base.errors import DataError
from utils.base.tables import AUDIO_COLUMNS, TEXT_COLUMNS, read_rows, write_rows
from utils.cli import call
from utils.data.caption_vectors import update_text_embeddings
from utils.data.clotho import read_captions_csv
from utils.data.datasets import LogmelStore
from utils.features.extract import extract_split
from utils.runs import load_checkpoint, load_run
from utils.search.retriever import Retriever


class Proc(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}  # this checkout's code, whatever is installed


def run_script(script: str, *args) -> Proc:
    """Run a numbered script's ``main`` in this process through :func:`utils.cli.call` (what ``run`` does
    before ``sys.exit``), capturing its output: the exit status and the one error line without a
    process start per call."""
    namespace = runpy.run_path(str(ROOT / script), run_name="faults")  # not "__main__": defines main, parser
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = call(namespace["main"], namespace["parser"], [str(a) for a in args])
    return Proc(status, out.getvalue(), err.getvalue())


def run_main(conf_path, *extra) -> Proc:
    return run_script("main.py", "--conf", conf_path, *extra)


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a malicious checkpoint would do with os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_refuses_a_checkpoint_that_runs_code(trained, tmp_path):
    run_dir, _ = copy_run(trained, tmp_path)
    conf_path = write_config(tmp_path / "c.yaml", trained["work"], run_dir, train={**ONE_STEP, "epochs": 3})
    last = run_dir / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    marker = tmp_path / "pwned"
    ckpt["extra"] = _Payload(marker)
    torch.save(ckpt, last)

    proc = run_main(conf_path)  # epochs=3: the run resumes instead of reporting "already finished"
    assert not marker.exists(), "resuming ran code from the checkpoint"
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(last) in err[0]
    assert "Python objects other than tensors" in err[0]


def test_scoring_and_search_say_why_a_checkpoint_is_refused(tmp_path):
    """Search and scoring load checkpoints through utils.runs.load_checkpoint: a refused file is
    reported as holding Python objects, not as 'corrupt or truncated'."""
    marker = tmp_path / "pwned"
    path = tmp_path / "best.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, path)
    with pytest.raises(DataError) as err:
        load_checkpoint(path)
    assert "Python objects other than tensors" in str(err.value) and "corrupt" not in str(err.value)
    assert not marker.exists()


def test_no_unsafe_torch_load_in_the_project():
    """Every torch.load in project code, tests and benchmarks uses weights_only=True."""
    offenders = []
    for folder in ["models", "utils", "postprocessing", "preprocessing", "pretrained_models", "benchmarks", "tests"]:
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if "weights_only=" + "False" in text:
                offenders.append(str(path.relative_to(ROOT)))
    for path in ROOT.glob("*.py"):
        if "weights_only=" + "False" in path.read_text():
            offenders.append(path.name)
    assert offenders == []


# --------------------------------------------------------------------------------------------
# 2. Crash consistency: kill -9 at each of the first file renames, rerun, and everything is whole
# --------------------------------------------------------------------------------------------

# One kill per kind of rename, in the order a 2-epoch run makes them: NAME@K = just before the K-th rename onto NAME.
KILL_POINTS = [
    "config.yaml@1",  # the run record (run_info.json is written the same way, right after)
    "metrics.jsonl@1",  # the metrics rewrite at the start
    "best.pt@1",  # epoch 1: nothing saved yet
    "last.pt@1",  # epoch 1: best.pt saved, last.pt not
    "last.pt@2",  # epoch 2: best.pt may be newer than the last.pt that should record it
    "curves.png@2",  # everything saved but the plot: the rerun finds a finished run
]
ONE_STEP = {"epochs": 2, "max_steps_per_epoch": 1, "batch_size": 4}  # the smallest run: 2 epochs of 1 step of 4 pairs


def test_kill_at_each_kind_of_rename_then_rerun_loses_nothing(tmp_path):
    work = make_work_dir(tmp_path / "work", {"development": 8, "validation": 4}, frames=(64, 72))
    cases, runs = [], {}
    for n, point in enumerate(KILL_POINTS):
        run_dir = tmp_path / "runs" / f"kill{n}"
        conf = write_config(tmp_path / f"c{n}.yaml", work, run_dir, train=ONE_STEP)
        cases.append(f"{point}:{conf}:{run_dir}")
        runs[point] = (run_dir, conf)
    scored, scored_conf = runs["last.pt@2"]  # scoring runs once: on the run whose best.pt was rewritten on resume
    result_path = tmp_path / "crash.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "crash_harness.py"), str(result_path), *cases,
                           "--score", str(scored), str(scored_conf)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(result_path.read_text())
    assert [r["case"] for r in results["cases"]] == KILL_POINTS
    for result in results["cases"]:
        point = result["case"]
        run_dir = runs[point][0]
        assert result["killed"], f"kill point {point} was never reached"
        assert result["rerun_rc"] == 0, result
        last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
        best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
        assert last["state"]["epoch"] == 2 and best["epoch"] == last["state"]["best_epoch"], point
        epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2], (point, epochs)
        for checkpoint in ("best", "last"):
            assert load_run(run_dir, checkpoint, "cpu").epoch == (2 if checkpoint == "last" else best["epoch"])
        leftovers = [p.name for p in run_dir.rglob(".*tmp*")]
        assert leftovers == [], (point, leftovers)
    assert results["score_rc"] == 0 and (scored / "eval" / "validation_xmodal_scores.hdf5").is_file()


# --------------------------------------------------------------------------------------------
# Shared: a trained one-step run, copied by each test that damages it
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    work = make_work_dir(tmp / "work", {"development": 8, "validation": 4}, frames=(64, 72))
    run_dir = tmp / "runs" / "base"
    conf = write_config(tmp / "c.yaml", work, run_dir, train=ONE_STEP)
    proc = run_main(conf)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {"work": work, "run": run_dir, "conf": conf}


def copy_run(trained, tmp_path, **sections):
    run_dir = tmp_path / "runs" / "copy"
    shutil.copytree(trained["run"], run_dir)
    conf = write_config(tmp_path / "c.yaml", trained["work"], run_dir, train=dict(ONE_STEP), **sections)
    return run_dir, conf


def one_error_line(proc, *needles):
    """The process exited 2 with exactly one stderr line, ``error: ...``, containing every needle."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


# --------------------------------------------------------------------------------------------
# 3. Bad clips: skipped with a reason, left out of training with a count; never stored non-finite
# --------------------------------------------------------------------------------------------

SR = 8000


def _tone(seconds=1.5, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def write_bad_clips(folder: Path) -> dict[str, str]:
    """fname -> the reason stage 2 must give (None: readable, maybe with a warning)."""
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / "full.flac", _tone(), SR)
    data = (folder / "full.flac").read_bytes()
    (folder / "truncated.flac").write_bytes(data[: len(data) // 3])
    (folder / "full.flac").unlink()
    y = _tone()
    y[100] = np.inf
    sf.write(folder / "inf.wav", y, SR, subtype="FLOAT")
    sf.write(folder / "huge.wav", _tone() * np.float32(1e20), SR, subtype="FLOAT")
    sf.write(folder / "slow.wav", _tone(60, 40), 40)  # 40 Hz: every mel band empty
    sf.write(folder / "cut.wav", _tone(), SR, subtype="PCM_16")
    data = (folder / "cut.wav").read_bytes()
    (folder / "cut.wav").write_bytes(data[: len(data) * 2 // 3])  # header still promises every sample
    return {"truncated.flac": "undecodable", "inf.wav": "NaN or infinite", "huge.wav": "not finite",
            "slow.wav": "too low", "cut.wav": None}


def test_bad_clips_are_skipped_with_reasons_and_training_goes_on(tmp_path):
    work = make_work_dir(tmp_path / "work", {"development": 10, "validation": 4}, frames=(64, 72))
    expected = write_bad_clips(work / "development")
    rows = read_rows(work / "development_audio.csv")
    for row, fname in zip(rows, expected, strict=False):  # the first clips get the bad files
        row.update(fname=fname, path=f"development/{fname}")
    for row in rows[len(expected):]:
        sf.write(work / "development" / f"{row['fid']}.wav", _tone(), SR, subtype="PCM_16")
        row.update(fname=f"{row['fid']}.wav", path=f"development/{row['fid']}.wav")
    write_rows(work / "development_audio.csv", rows, AUDIO_COLUMNS)
    fnames = {r["fid"]: r["fname"] for r in rows}
    text_rows = read_rows(work / "development_text.csv")
    for r in text_rows:
        r["fname"] = fnames[r["fid"]]
    write_rows(work / "development_text.csv", text_rows, TEXT_COLUMNS)
    with h5py.File(work / "sbert_embeds.hdf5", "r") as h5:
        vectors = h5["development/embeds"][()]
    model, fingerprint = fake_text_model(work)
    update_text_embeddings(work / "sbert_embeds.hdf5", {"development": text_rows}, model, lambda t: vectors,
                           fingerprint)
    conf = write_config(tmp_path / "c.yaml", work, tmp_path / "runs" / "bad", train=ONE_STEP,
                        features={"workers": 1})

    stage2 = run_script("preprocessing/02_audio_logmel.py", "--conf", conf, "--splits", "development",
                        "--no-progress")
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    assert "cut.wav is truncated" in stage2.stderr  # a warning, and the clip is kept
    report = {r["fname"]: r["reason"] for r in read_rows(work / "development_skipped.csv")}
    bad = {f: why for f, why in expected.items() if why}
    assert set(report) == set(bad)
    for fname, why in bad.items():
        assert why in report[fname], (fname, report[fname])
    with h5py.File(work / "development_audio_logmels.hdf5", "r") as h5:
        stored = {fnames[fid] for fid in h5}
        assert stored == set(fnames.values()) - set(bad)
        assert all(np.isfinite(h5[fid][()]).all() for fid in h5)

    again = run_script("preprocessing/02_audio_logmel.py", "--conf", conf, "--splits", "development",
                       "--no-progress")
    assert again.returncode == 0 and set(read_rows(work / "development_skipped.csv")[0]) >= {"reason"}

    proc = run_main(conf)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"leaving out {len(bad)} clip(s) of 'development' ({5 * len(bad)} captions)" in proc.stderr


def test_stage2_never_keeps_non_finite_features(tmp_path):
    """An HDF5 holding NaN features (as older code stored for a 1e20-amplitude clip) is not 'up to date'."""
    folder = tmp_path / "development"
    folder.mkdir()
    rows = []
    for i, y in enumerate([_tone(), _tone() * np.float32(1e20)]):
        sf.write(folder / f"c{i}.wav", y, SR, subtype="FLOAT")
        rows.append({"fid": f"dev_{i}", "fname": f"c{i}.wav", "path": f"development/c{i}.wav", "duration": "1.5",
                     "sample_rate": str(SR)})
    out = tmp_path / "out.hdf5"
    extract_split(rows[:1], tmp_path, out, tmp_path / "s.csv", workers=1, progress=False)
    with h5py.File(out, "a") as h5:
        h5["dev_1"] = np.full((80, 64), np.nan, np.float32)  # what the old code stored
    summary = extract_split(rows, tmp_path, out, tmp_path / "s.csv", workers=1, progress=False)
    assert not summary.up_to_date and [r["fname"] for r in summary.skipped] == ["c1.wav"]
    with h5py.File(out, "r") as h5:
        assert sorted(h5) == ["dev_0"]


def test_search_skips_a_clip_with_non_finite_features(trained, tmp_path):
    folder = tmp_path / "sounds"
    folder.mkdir()
    sf.write(folder / "ok.wav", _tone(), SR, subtype="PCM_16")
    sf.write(folder / "huge.wav", _tone() * np.float32(1e20), SR, subtype="FLOAT")
    r = Retriever.from_run(trained["run"], device="cpu")
    update = r.index_folder(folder, progress=False)
    assert update.skipped == ["huge.wav"] and update.added == ["ok.wav"]  # unreadable is not "added"
    assert "1 added" in update.summary() and "1 unreadable" in update.summary()
    assert np.isfinite(r.index.embeddings).all() and len(r.index) == 1


# --------------------------------------------------------------------------------------------
# 4. Impossible settings fail at start, with the allowed range, and destroy nothing
# --------------------------------------------------------------------------------------------

BAD_SETTINGS = ["features.hop_sec=0", "features.n_mels=0", "train.epochs=0", "train.log_every=0",
                "train.eval_batch_size=0", "text.batch_size=0", "train.num_workers=-1", "features.workers=-2",
                "train.lr=-0.001", "train.scheduler.factor=1.0", "train.scheduler.factor=2", "eval.top_k=0",
                "train.temperature=.nan"]


@pytest.mark.parametrize("setting", BAD_SETTINGS)
def test_impossible_setting_is_refused_with_its_range(tmp_path, setting):
    conf = write_config(tmp_path / "c.yaml", tmp_path, tmp_path / "runs" / "r")
    key = setting.split("=")[0]
    with pytest.raises(ConfigError, match=rf"'{key}' .* out of range: allowed .*value"):
        load_config(conf, [setting])


def test_every_numeric_setting_has_a_range():
    def numeric_keys(cls, prefix=""):
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                yield from numeric_keys(tp, f"{prefix}{f.name}.")
            elif tp in (int, float):
                yield f"{prefix}{f.name}"

    assert sorted(numeric_keys(Config)) == sorted(RANGES)


def test_bad_setting_leaves_stage2_output_untouched(tmp_path):
    rows = [{"fid": "dev_0", "fname": "a.wav", "path": "development/a.wav", "duration": "1.5", "sample_rate": "8000"}]
    (tmp_path / "development").mkdir()
    sf.write(tmp_path / "development" / "a.wav", _tone(), SR, subtype="PCM_16")
    write_rows(tmp_path / "development_audio.csv", rows, AUDIO_COLUMNS)
    out = tmp_path / "development_audio_logmels.hdf5"
    extract_split(rows, tmp_path, out, tmp_path / "development_skipped.csv", workers=1, progress=False)
    before = out.read_bytes()
    conf = write_config(tmp_path / "c.yaml", tmp_path, tmp_path / "runs" / "r")
    proc = run_script("preprocessing/02_audio_logmel.py", "--conf", conf, "--splits", "development",
                      "--set", "features.hop_sec=0", "--no-progress")
    one_error_line(proc, "features.hop_sec", "allowed")
    assert out.read_bytes() == before

    # Good settings but not one readable clip: the good file is kept, and the run says so.
    (tmp_path / "development" / "a.wav").write_bytes(b"junk" * 100)
    with pytest.raises(DataError, match="left as it was"):
        extract_split(rows, tmp_path, out, tmp_path / "development_skipped.csv", workers=1, progress=False,
                      n_mels=32)
    assert out.read_bytes() == before


# --------------------------------------------------------------------------------------------
# 5. Damaged or unreadable files: one-line errors, and recovery where possible
# --------------------------------------------------------------------------------------------


def test_non_utf8_config_and_invalid_yaml_are_one_line_errors(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("train:\n  lr: 0.001  # réglé\n".encode("latin-1"))
    one_error_line(run_script("preprocessing/01_clotho_dataset.py", "--conf", latin), str(latin), "UTF-8")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [\n")
    with pytest.raises(ConfigError) as err:
        load_config(broken)
    assert "\n" not in str(err.value) and "line 2" in str(err.value)


CAPTIONS = [("dog.wav", ["a dog barks at the café", "un chien", "caption three", "four", "five"])]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "latin-1", "cp1252"])
def test_caption_csv_in_another_encoding_is_decoded(tmp_path, encoding):
    header = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
    body = "".join(f"{name},{','.join(caps)}\n" for name, caps in CAPTIONS)
    path = tmp_path / "clotho_captions_development.csv"
    path.write_bytes((header + body).encode(encoding))
    assert read_captions_csv(path) == CAPTIONS


def _corrupt_symbol_table(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(b"SNOD")
    assert at > 0
    data[at:at + 4] = b"XXXX"  # "bad symbol table node signature"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "symbol table"])
def test_damaged_features_hdf5_is_rebuilt_by_stage2_and_reported_by_training(tmp_path, damage):
    rows = []
    (tmp_path / "development").mkdir()
    for i in range(3):
        sf.write(tmp_path / "development" / f"c{i}.wav", _tone(), SR, subtype="PCM_16")
        rows.append({"fid": f"dev_{i}", "fname": f"c{i}.wav", "path": f"development/c{i}.wav", "duration": "1.5",
                     "sample_rate": str(SR)})
    out = tmp_path / "out.hdf5"
    extract_split(rows, tmp_path, out, tmp_path / "s.csv", workers=1, progress=False)
    if damage == "truncate":
        out.write_bytes(out.read_bytes()[:3000])
    else:
        _corrupt_symbol_table(out)
    with pytest.raises(DataError, match="re-run preprocessing/02_audio_logmel.py"):
        LogmelStore(out)
    summary = extract_split(rows, tmp_path, out, tmp_path / "s.csv", workers=1, progress=False)
    assert summary.n_computed == 3
    with h5py.File(out, "r") as h5:
        assert sorted(h5) == ["dev_0", "dev_1", "dev_2"]


def test_truncated_last_pt_on_resume_is_one_line(trained, tmp_path):
    run_dir, _ = copy_run(trained, tmp_path)
    conf = write_config(tmp_path / "c.yaml", trained["work"], run_dir, train={**ONE_STEP, "epochs": 3})
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])
    one_error_line(run_main(conf), str(last), "--restart")


def test_resume_with_other_model_settings_names_the_setting(trained, tmp_path):
    run_dir, _ = copy_run(trained, tmp_path)
    conf = write_config(tmp_path / "c.yaml", trained["work"], run_dir, train={**ONE_STEP, "epochs": 3},
                        model={"audio_enc": {"width": 0.25, "init": "random"}})
    one_error_line(run_main(conf), "model.audio_enc.width=0.125", "0.25")


def test_damaged_run_config_falls_back_to_the_checkpoints_copy(trained, tmp_path):
    run_dir, conf = copy_run(trained, tmp_path)
    (run_dir / "config.yaml").write_bytes(b"model: {audio_enc: [\n\xff\xfe")
    proc = run_script("postprocessing/01_xmodal_scores.py", "--conf", conf, "--run", run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "using the config saved in" in proc.stderr
    assert (run_dir / "eval" / "validation_xmodal_scores.hdf5").is_file()
    r = Retriever.from_run(run_dir, device="cpu")  # search loads runs the same way
    assert r.conf.model.audio_enc.width == 0.125


def test_unwritable_output_folders_fail_before_the_work(trained, tmp_path):
    run_dir, conf = copy_run(trained, tmp_path)
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "checkpoints").write_text("not a folder")  # root ignores permissions: block it with a file
    proc = run_main(conf)
    one_error_line(proc, "checkpoints", str(run_dir / "checkpoints"))
    assert "epoch   1" not in proc.stdout  # no epoch was trained and thrown away

    run_dir, conf = copy_run(trained, tmp_path / "second")
    (run_dir / "eval").write_text("not a folder")
    proc = run_script("postprocessing/01_xmodal_scores.py", "--conf", conf, "--run", run_dir)
    one_error_line(proc, str(run_dir / "eval"))
    assert "captions x" not in proc.stdout  # refused before scoring


# --------------------------------------------------------------------------------------------
# 6. Small ones
# --------------------------------------------------------------------------------------------


def test_resume_flag_insists_on_a_checkpoint(trained, tmp_path):
    conf = write_config(tmp_path / "c.yaml", trained["work"], tmp_path / "runs" / "fresh", train=ONE_STEP)
    one_error_line(run_main(conf, "--resume"), "--resume", "last.pt")
    assert not (tmp_path / "runs" / "fresh" / "checkpoints").exists()


def test_newline_in_a_file_name_stays_on_one_table_row(tmp_path):
    table = format_results("q", [(str(tmp_path / "evil\nname.wav"), 0.5), (str(tmp_path / "ok.wav"), 0.25)],
                           tmp_path)
    assert len(table.splitlines()) == 4 and "evil\\nname.wav" in table
