"""The review page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
keyboard review, group confirm, undo, signing, reload, kill -9 and restart of the server, and the
security rules over real HTTP. One browser and one server for the module; the server runs as
``wbc-nnabla review`` in its own process, so that it can be killed.

Screenshots for docs/review.md are written only when ``WBC_SCREENSHOTS=DIR`` is set.
"""
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from review_helpers import ReviewServer, chromium, write_predictions
from wbc_nnabla.review.db import ReviewDB

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:            # the test extra not installed
    webdriver = None

pytestmark = pytest.mark.skipif(
    webdriver is None or CHROMIUM is None or CHROMEDRIVER is None,
    reason="the review page's browser tests need Chromium and its driver: apt-get install chromium "
           "chromium-driver (Debian), and pip install -e '.[test]' (selenium)")

SHOTS = os.environ.get("WBC_SCREENSHOTS")


@pytest.fixture(scope="module")
def setup():
    folder = Path(tempfile.mkdtemp(prefix="review_browser_"))
    pred = write_predictions(folder, per_class=5, smears=2, seed=3)
    server = ReviewServer(pred, folder / "review.sqlite", "--pending-threshold", "0.6", "--reviewer", "tester").start()
    driver = chromium(folder / "chromium-profile")
    try:
        yield server, driver, folder
    finally:
        driver.quit()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _open(driver, url, ready="smear"):
    driver.get("about:blank")          # a new document: not a hash change on the old one
    driver.get(url)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.body.dataset.ready") == ready)


def _idle(driver):
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.body.dataset.inflight || '0'") == "0")


def _keys(driver, *keys):
    body = driver.find_element(By.TAG_NAME, "body")
    for k in keys:
        body.send_keys(k)
    _idle(driver)


def _tiles(driver):
    """``[(cell id, group, state, decision)]`` in display order."""
    return driver.execute_script(
        "return [...document.querySelectorAll('.tile')].map(t => [Number(t.dataset.id), "
        "t.closest('.group').dataset.group, t.dataset.state, t.dataset.decision])")


def _cursor(driver) -> int:
    return int(driver.find_element(By.CSS_SELECTOR, ".tile.cursor").get_attribute("data-id"))


def _decisions(server, smear="S1"):
    review = ReviewDB(server.db)
    return {c["id"]: c["decision"] for c in review.smear(review.smear_id(smear))["cells"]}


def _shot(driver, name):
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / name))


def test_1_load_a_smear_pending_group_first(setup):
    server, driver, _ = setup
    _open(driver, server.url, ready="list")
    rows = driver.find_elements(By.CSS_SELECTOR, "#smears tbody tr")
    assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == ["S1", "S2"]
    _shot(driver, "review_smears.png")
    _keys(driver, Keys.ENTER)                                    # the first smear, by keyboard
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.body.dataset.ready") == "smear")
    tiles = _tiles(driver)
    groups = list(dict.fromkeys(g for _, g, _, _ in tiles))
    assert len(tiles) == 15 and groups[0] == "pending"
    assert all(s == "undecided" for _, _, s, _ in tiles)
    assert _cursor(driver) == tiles[0][0]


def test_2_reclassify_by_keyboard(setup):
    server, driver, _ = setup
    first, second = [t[0] for t in _tiles(driver)[:2]]
    _keys(driver, "4")                                           # Mono, then the cursor moves on
    assert _cursor(driver) == second
    _keys(driver, Keys.ARROW_LEFT, Keys.SHIFT + Keys.ARROW_RIGHT, "0")   # both out of the count
    assert _decisions(server)[first] == "Unusable" and _decisions(server)[second] == "Unusable"
    _keys(driver, "u")                                           # undo: back to Mono and undecided
    assert _decisions(server)[first] == "Mono" and _decisions(server)[second] is None
    tile = driver.find_element(By.CSS_SELECTOR, f'.tile[data-id="{first}"]')
    assert tile.get_attribute("data-decision") == "Mono"
    mono = driver.find_element(By.CSS_SELECTOR, '#differential tr[data-class="Mono"]').text.split()
    assert mono[-2:] == ["1", "100.0"]                           # review n and % beside the AI's


def test_3_confirm_a_group_and_undo_it(setup):
    server, driver, _ = setup
    _keys(driver, Keys.PAGE_DOWN)                                # the first group after Pending
    group = driver.execute_script("return document.querySelector('.tile.cursor').closest('.group').dataset.group")
    members = [i for i, g, _, _ in _tiles(driver) if g == group]
    _keys(driver, "g")
    assert all(_decisions(server)[i] is not None for i in members)
    _keys(driver, Keys.CONTROL + "z")
    assert all(_decisions(server)[i] is None for i in members)
    kinds = [t["kind"] for t in ReviewDB(server.db).audit("S1")]
    assert kinds[-1] == "undo" and "confirm" in kinds


def test_4_signing_is_refused_while_a_pending_cell_remains(setup):
    server, driver, _ = setup
    pending = [i for i, g, _, _ in _tiles(driver) if g == "pending"]
    for group in dict.fromkeys(g for _, g, _, _ in _tiles(driver)):    # every group but Pending
        if group != "pending":
            driver.execute_script(f"document.querySelector('.group[data-group=\"{group}\"] .confirm-group').click()")
            _idle(driver)
    assert any(_decisions(server)[i] is None for i in pending)
    driver.find_element(By.ID, "sign").click()
    driver.switch_to.alert.accept()
    _idle(driver)
    WebDriverWait(driver, 10).until(lambda d: "cannot be signed" in d.find_element(By.ID, "status").text)
    assert ReviewDB(server.db).smears()[0]["signed_at"] is None
    _shot(driver, "review_smear.png")


def test_5_sign_then_read_only(setup):
    server, driver, _ = setup
    driver.execute_script("document.querySelector('.group[data-group=\"pending\"] .confirm-group').click()")
    _idle(driver)
    driver.find_element(By.ID, "sign").click()
    driver.switch_to.alert.accept()
    _idle(driver)
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "banner").is_displayed())
    assert "Signed by tester" in driver.find_element(By.ID, "banner").text
    before = _decisions(server)
    _keys(driver, "1")
    assert "reopen it" in driver.find_element(By.ID, "status").text
    assert _decisions(server) == before and ReviewDB(server.db).smears()[0]["signed_by"] == "tester"
    _shot(driver, "review_signed.png")


def test_6_reload_keeps_everything(setup):
    server, driver, _ = setup
    before = _tiles(driver)
    driver.refresh()
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.body.dataset.ready") == "smear")
    assert _tiles(driver) == before
    assert driver.find_element(By.ID, "banner").is_displayed()


def test_7_kill_9_and_restart_keeps_everything(setup):
    server, driver, _ = setup
    _open(driver, server.url + "#/smear/2")
    _keys(driver, "3", "5", "6")                                 # three decisions on smear S2
    stored = _decisions(server, "S2")
    assert sum(v is not None for v in stored.values()) == 3
    before = _tiles(driver)
    server.kill9()
    server.start()
    _open(driver, server.url + "#/smear/2")
    assert _tiles(driver) == before and _decisions(server, "S2") == stored
    _open(driver, server.url + "#/smear/1")
    assert driver.find_element(By.ID, "banner").is_displayed()


def _request(url, method="GET", body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Review-Token"] = token
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_8_token_traversal_and_unknown_class_over_http(setup):
    server, driver, _ = setup
    assert _request(server.base + "/api/smears") == 403
    assert _request(server.base + "/") == 403
    assert _request(server.base + "/api/smears", token=server.token) == 200
    for path in ("/api/cells/..%2F..%2F..%2Fetc%2Fpasswd/image", "/static/..%2f..%2fdb.py",
                 "/api/cells/" + str(server.db).replace("/", "%2F")):
        assert _request(server.base + path, token=server.token) == 404, path
    before = ReviewDB(server.db).audit()
    cell = next(iter(_decisions(server, "S2")))
    assert _request(server.base + "/api/smears/2/decide", "POST", {"cells": [cell], "decision": "Myelocyte"},
                    server.token) == 400
    status = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/api/smears/2/decide', {method: 'POST', headers: {'Content-Type': 'application/json', "
        "'X-Review-Token': document.querySelector('meta[name=review-token]').content}, "
        f"body: JSON.stringify({{cells: [{cell}], decision: 'Myelocyte'}})}}).then(r => done(r.status));")
    assert status == 400
    assert ReviewDB(server.db).audit() == before


def test_9_two_tabs_see_each_others_decisions_after_a_reload(setup):
    server, driver, _ = setup
    _open(driver, server.url + "#/smear/2")
    first = driver.current_window_handle
    driver.switch_to.new_window("tab")
    _open(driver, server.url + "#/smear/2")
    second = driver.current_window_handle
    undecided = [i for i, _, s, _ in _tiles(driver) if s == "undecided"]
    driver.switch_to.window(first)
    assert _cursor(driver) == undecided[0]                       # a smear opens on its first undecided cell
    _keys(driver, "2")                                           # tab 1: Eosinophil
    driver.switch_to.window(second)
    assert dict((i, d) for i, _, _, d in _tiles(driver))[undecided[0]] == ""   # not yet: no reload
    driver.refresh()
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.body.dataset.ready") == "smear")
    assert dict((i, d) for i, _, _, d in _tiles(driver))[undecided[0]] == "Eosinophil"
    driver.close()
    driver.switch_to.window(first)
