"""Training refuses training clips that are also validation or evaluation clips (utils/data/overlap.py): by file
and by audio content, not by split name; data.allow_overlap=true lets it train and the run record says so."""

from __future__ import annotations

import json

import h5py
import pytest
from conftest import make_work_dir, write_config

from utils.base.config import load_config
from utils.base.errors import DataError
from utils.training.loop import train
from utils.training.setup import load_training_data


@pytest.fixture
def work3(tmp_path):
    return make_work_dir(tmp_path / "work", {"development": 10, "validation": 5, "evaluation": 4})


def conf_for(tmp_path, work, **data):
    return load_config(write_config(tmp_path / "c.yaml", work, tmp_path / "runs" / "r",
                                    data={"dataset_dir": str(work), "splits": ["development", "validation", "evaluation"],
                                          "eval_splits": ["evaluation"], **data},
                                    train={"epochs": 1, "batch_size": 8, "num_workers": 0, "eval_batch_size": 16,
                                           "log_every": 2, "device": "cpu", "early_stop": {"enabled": False}}))


def test_disjoint_splits_train(work3, tmp_path):
    assert load_training_data(conf_for(tmp_path, work3)).overlap == []


def test_training_on_an_evaluation_split_is_refused(work3, tmp_path):
    conf = conf_for(tmp_path, work3, train_split="development+evaluation")
    with pytest.raises(DataError, match=r"4 training clip\(s\) of 'development\+evaluation' are also in split "
                                        r"'evaluation'.*evaluation/clip 0, take \(0\).wav.*allow_overlap=true"):
        load_training_data(conf)


def test_same_audio_under_another_name_is_found(work3, tmp_path):
    """A development clip whose log-mels equal a validation clip's (a copy of the file renamed)."""
    with h5py.File(work3 / "validation_audio_logmels.hdf5", "r") as h5:
        copy = h5["val_0002"][()]
    with h5py.File(work3 / "development_audio_logmels.hdf5", "a") as h5:
        del h5["dev_0007"]
        h5["dev_0007"] = copy
    with pytest.raises(DataError, match=r"1 training clip\(s\) .* split 'validation'.*development/clip 7, take "
                                        r"\(1\).wav = .*validation/clip 2, take \(2\).wav"):
        load_training_data(conf_for(tmp_path, work3))


def test_allow_overlap_trains_and_is_recorded(work3, tmp_path, capsys):
    conf = conf_for(tmp_path, work3, train_split="development+evaluation", allow_overlap=True)
    train(conf)
    info = json.loads((tmp_path / "runs" / "r" / "run_info.json").read_text())
    assert info["allow_overlap"] is True and "split 'evaluation'" in info["split_overlap"][0]
    assert info["history"][0]["allow_overlap"] is True
    assert "allowed by data.allow_overlap" in capsys.readouterr().err
