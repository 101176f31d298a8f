"""The listening page in a real headless Chromium (Selenium + chromedriver).

Skipped, with the reason, when Chromium, its driver or selenium is missing (``make test`` needs no browser;
``.ci/run`` installs them and sets $SEARCH_PAGE_REQUIRE_BROWSER, which turns the skip into a failure). Screenshots go to $SEARCH_PAGE_SCREENSHOTS, else to the test's tmp dir.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import soundfile as sf
from page_setup import CAPTIONS, build_page

from utils.search.browser import find_chromium, start_chromium
from utils.search.page import BackgroundServer

pytest.importorskip("selenium", reason="selenium is not installed (pip install -r requirements.txt)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

HAVE_METADATA = 1  # HTMLMediaElement.readyState


@pytest.fixture(scope="module")
def browser():
    found = find_chromium()
    if found is None:
        message = "no Chromium: apt-get install chromium chromium-driver (or set $CHROMIUM and $CHROMEDRIVER)"
        if os.environ.get("SEARCH_PAGE_REQUIRE_BROWSER"):  # .ci/run installs it: a missing browser is a failure
            pytest.fail(message)
        pytest.skip(message)
    driver = start_chromium(*found)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    state, files, _ = build_page(tmp)
    with BackgroundServer(state) as url:
        yield url, state, tmp


def shots_dir(tmp: Path) -> Path:
    folder = Path(os.environ.get("SEARCH_PAGE_SCREENSHOTS") or tmp / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_for_results(driver, list_id: str, after: int, timeout: float = 30) -> list[str]:
    """Wait until the list's query number passes ``after`` and it is rendered; its paths, in order."""
    def done(d):
        seq = d.execute_script(f"const l = document.getElementById('{list_id}'); "
                               "return l.dataset.state === 'done' ? Number(l.dataset.seq) : -1;")
        return seq > after
    WebDriverWait(driver, timeout).until(done)
    return [li.get_attribute("data-path") for li in driver.find_elements(By.CSS_SELECTOR, f"#{list_id} > li")]


def current_seq(driver, list_id: str) -> int:
    return int(driver.execute_script(f"return Number(document.getElementById('{list_id}').dataset.seq || 0);"))


def test_page_search_play_and_more_like_this(browser, served):
    url, state, tmp = served
    browser.get(url)
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.ready === '1';"))
    assert "8 files indexed, 2 skipped" in browser.find_element(By.ID, "status-line").text

    caption, expected = "a rising chirp", "sub/chirp.wav"
    box = browser.find_element(By.ID, "query")
    box.send_keys(caption)
    box.submit()
    paths = wait_for_results(browser, "results", 0)
    assert expected in paths[:3] and len(paths) == 8  # k=10 on 8 files
    assert "q=a+rising+chirp" in browser.current_url  # the URL holds the query

    first = browser.find_element(By.CSS_SELECTOR, "#results > li audio")  # preload="none": play() fetches it
    browser.execute_script("arguments[0].muted = true; arguments[0].play();", first)
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return arguments[0].readyState;", first)
                                     >= HAVE_METADATA)
    want = sf.info(str(state.retriever.index.folder / paths[0])).duration
    assert browser.execute_script("return arguments[0].duration;", first) == pytest.approx(want, abs=0.05)
    browser.save_screenshot(str(shots_dir(tmp) / "search.png"))

    seq = current_seq(browser, "results")
    item = browser.find_element(By.CSS_SELECTOR, f'#results > li[data-path="{expected}"]')
    item.find_element(By.CSS_SELECTOR, "button.like").click()
    like = wait_for_results(browser, "results", seq)
    assert like[0] == expected and "like=sub%2Fchirp.wav" in browser.current_url
    browser.save_screenshot(str(shots_dir(tmp) / "more_like_this.png"))

    seq = current_seq(browser, "results")
    browser.back()  # the previous query comes back from the URL
    assert wait_for_results(browser, "results", seq) == paths
    assert browser.find_element(By.ID, "query").get_attribute("value") == caption


def test_shared_url_and_empty_query(browser, served):
    url, _, tmp = served
    browser.get(f"{url}?q=a+high+pitched+beep&k=5")  # a shared link runs its query on load
    paths = wait_for_results(browser, "results", 0)
    assert paths[0] == "high.wav" and len(paths) == 5 and browser.find_element(By.ID, "k").get_attribute("value") == "5"
    browser.get(url)
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.ready === '1';"))
    browser.find_element(By.CSS_SELECTOR, "#search-form button").click()  # empty box
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "results").get_attribute("data-state") == "error")
    assert "empty" in browser.find_element(By.ID, "search-info").text


def test_upload_a_clip_as_the_query(browser, served):
    url, state, _ = served
    browser.get(url)
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.ready === '1';"))
    seq = current_seq(browser, "results")
    browser.find_element(By.ID, "upload").send_keys(str(state.retriever.index.folder / "noise.flac"))
    assert wait_for_results(browser, "results", seq)[0] == "noise.flac"
    assert "noise.flac (uploaded)" in browser.find_element(By.ID, "search-info").text
    assert os.listdir(state.upload_dir.name) == []


def test_evaluation_view_highlights_the_true_clip(browser, served):
    url, _, tmp = served
    browser.get(f"{url}?view=eval")
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#captions li")) == len(CAPTIONS))
    pick = next(li for li in browser.find_elements(By.CSS_SELECTOR, "#captions li") if li.text == "a soft whistle")
    pick.click()
    paths = wait_for_results(browser, "eval-results", 0)
    true_items = browser.find_elements(By.CSS_SELECTOR, "#eval-results > li.true")
    assert paths[0] == "sub/mid.ogg" and [li.get_attribute("data-path") for li in true_items] == ["sub/mid.ogg"]
    assert "ranks 1 of 8" in browser.find_element(By.ID, "eval-info").text and "caption=4" in browser.current_url
    browser.save_screenshot(str(shots_dir(tmp) / "evaluation.png"))


def test_index_view_lists_skipped_files(browser, served):
    url, _, tmp = served
    browser.get(f"{url}?view=index")
    WebDriverWait(browser, 30).until(lambda d: "broken.wav" in d.find_element(By.ID, "skipped").text)
    text = browser.find_element(By.ID, "skipped").text
    assert "cannot read audio" in text and "link.wav" in text and "outside the indexed folder" in text
    assert "files indexed\n8" in browser.find_element(By.ID, "index-status").text
    browser.save_screenshot(str(shots_dir(tmp) / "index.png"))


def test_filters_and_thumbnails(browser, served):
    url, state, tmp = served
    browser.get(f"{url}?q=a+low+hum&k=10&folder=sub")  # a shared link carries its filters
    paths = wait_for_results(browser, "results", 0)
    assert sorted(paths) == ["sub/chirp.wav", "sub/hum.wav", "sub/mid.ogg"]
    assert browser.find_element(By.ID, "folder").get_attribute("value") == "sub"
    assert "(in sub/)" in browser.find_element(By.ID, "search-info").text
    options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#folder-list option")]
    assert options == ["sub"]

    seq = current_seq(browser, "results")
    browser.find_element(By.ID, "min-s").send_keys("2")
    browser.find_element(By.ID, "query").submit()
    paths = wait_for_results(browser, "results", seq)
    assert sorted(paths) == ["sub/chirp.wav", "sub/hum.wav"] and "min_s=2" in browser.current_url

    def thumbs_loaded(d):
        return d.execute_script("const imgs = [...document.querySelectorAll('#results img.thumb')];"
                                "return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth === 160)"
                                " ? imgs.length : 0;")
    assert WebDriverWait(browser, 30).until(thumbs_loaded) == 2
    srcs = [i.get_attribute("src") for i in browser.find_elements(By.CSS_SELECTOR, "#results img.thumb")]
    assert [s.split("/thumb/")[1].replace("%2F", "/") for s in srcs] == paths
    assert len(list(state.thumbs.folder.rglob("*.png"))) >= 2  # made by the server, cached on disk
    browser.save_screenshot(str(shots_dir(tmp) / "filters_thumbnails.png"))
