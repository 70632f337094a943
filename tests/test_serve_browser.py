"""The page at `/` in headless Chromium against tiny-model servers: the answer streams in and
follows its text, pages appear, Stop closes the stream and the server frees the row, a narrow
window stacks the columns, the KV gauge shows more than full text, and the browser logs no error.

Needs the `browser` extra (selenium) and Debian's chromium and chromium-driver (the driver's path
is given, so selenium downloads nothing). Without them the tests skip, except under CI=true,
where missing chromium fails them:

    pip install -e ".[browser]" && apt-get install -y chromium chromium-driver
    CI=true python -m pytest -m slow tests/test_serve_browser.py
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
import time

import httpx
import pytest
from conftest import require_extra

require_extra("fastapi")
uvicorn = require_extra("uvicorn")
# not installed by make setup (`make test-browser` installs it): a skip with its reason
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs: pip install -e '.[browser]'")

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = pytest.mark.slow


def start_server(chunk_tokens: int | None = None):
    """A tiny-model server in a thread: (its URL, a function that stops it)."""
    from vist2.serve.health import free_port, wait_healthy
    from vist2.engine import Engine
    from vist2.generate import load_model
    from vist2.options import chunk_options
    from vist2.render import Renderer
    from vist2.serve.app import create_app
    from vist2.serve.command import server_limits

    model, tokenizer = load_model(preset_name="tiny")
    renderer = Renderer(model.config.render)
    engine = Engine(model, tokenizer, renderer, chunk_options(model, renderer, chunk_tokens=chunk_tokens))
    limits = server_limits(model, tokenizer, 1000, 4000, 256, 0.0)  # greedy by default: the pages are known
    app = create_app(engine, tokenizer, renderer, "tiny", "gcc", limits, 8)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)

    def stop():
        server.should_exit = True
        thread.join(timeout=30)

    return url, stop


@pytest.fixture(scope="module")
def server():
    url, stop = start_server()
    yield url
    stop()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        reason = "needs Debian's chromium and chromedriver: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and selenium is installed, but chromium is missing: {reason}")
        pytest.skip(reason)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,800"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def by_id(browser, name: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, name)


def ask(browser, url: str, mode: str, tokens: int) -> None:
    """Opens the page and sends the prompt in `mode` for `tokens` tokens (ignoring end of text)."""
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(url + "/")
    WebDriverWait(browser, 10).until(lambda b: by_id(b, "model").text == "tiny")
    Select(by_id(browser, "mode")).select_by_visible_text(mode)
    limit = by_id(browser, "max")
    limit.clear()
    limit.send_keys(str(tokens))
    by_id(browser, "noeos").click()  # random weights: run to the full length
    by_id(browser, "go").click()


def wait_for_status(browser, prefix: str, seconds: float = 90) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, seconds).until(lambda b: by_id(b, "status").text.startswith(prefix))
    return by_id(browser, "status").text


def console_errors(browser) -> list[dict]:
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_page_streams_the_answer_follows_it_and_shows_pages(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    ask(browser, server, "gcc", 400)
    status = wait_for_status(browser, "done")
    assert "6 chunks compressed" in status  # 400 tokens, K = 64
    images = browser.find_elements(By.CSS_SELECTOR, "#pages img")
    assert len(images) == 6
    assert all(image.get_attribute("naturalWidth") == "128" for image in images)  # tiny's page width
    for box in ("answer", "pages"):
        element = by_id(browser, box)
        height, top, shown = (int(element.get_property(name)) for name in ("scrollHeight", "scrollTop", "clientHeight"))
        assert height > shown  # the text (the pages) overflow the box ...
        assert top + shown >= height - 2  # ... and the box scrolled with them to the end
    held, full = int(by_id(browser, "kv").text), int(by_id(browser, "full").text)
    assert 0 < held < full
    assert by_id(browser, "kv-share").text == f"({round(100 * held / full)}%)"
    peak = int(by_id(browser, "kv-peak").text)
    assert f"KV peak {peak} vs {full} full text" in status  # the page's peak is the server's
    assert by_id(browser, "peak-share").text == f"({round(100 * peak / full)}% of full text)"
    assert "over" not in by_id(browser, "bar").get_attribute("class")
    assert console_errors(browser) == []  # the favicon is inline: no 404 either
    shot = tmp_path / "serve_page.png"
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == base64.b64decode("iVBORw0KGgo=")


def test_stop_closes_the_stream_and_the_server_frees_the_row(server, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    ask(browser, server, "gcc", 4000)
    WebDriverWait(browser, 60).until(lambda b: b.find_element("id", "answer").get_attribute("textContent"))
    assert by_id(browser, "go").get_property("disabled")
    by_id(browser, "stop").click()
    assert wait_for_status(browser, "stopped", 10).startswith("stopped")
    deadline = time.monotonic() + 5
    while httpx.get(server + "/health").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(server + "/health").json()["running"] == 0
    text = by_id(browser, "answer").get_attribute("textContent")
    time.sleep(0.5)
    assert by_id(browser, "answer").get_attribute("textContent") == text  # nothing arrives after Stop
    assert not by_id(browser, "go").get_property("disabled") and by_id(browser, "stop").get_property("disabled")
    assert console_errors(browser) == []


def test_a_narrow_window_stacks_the_columns(server, browser):
    from selenium.webdriver.common.by import By

    def columns():
        browser.get(server + "/")
        return [section.rect for section in browser.find_elements(By.CSS_SELECTOR, "main > section")]

    answer, pages = columns()
    assert answer["y"] == pages["y"] and answer["x"] < pages["x"]  # wide: side by side
    browser.set_window_size(480, 900)
    try:
        answer, pages = columns()
        assert pages["y"] >= answer["y"] + answer["height"] and answer["x"] == pages["x"]  # narrow: stacked
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        browser.set_window_size(1100, 800)
    assert console_errors(browser) == []


def test_the_gauge_shows_when_gcc_holds_more_than_full_text(browser):
    """K = 8 on tiny's 16-token page: each chunk becomes more visual tokens than it had text tokens."""
    url, stop = start_server(chunk_tokens=8)
    try:
        ask(browser, url, "gcc", 40)
        wait_for_status(browser, "done")
        held, full = int(by_id(browser, "kv").text), int(by_id(browser, "full").text)
        assert held > full
        assert by_id(browser, "kv-share").text == f"({round(100 * held / full)}%: more than full text)"
        assert "over" in by_id(browser, "bar").get_attribute("class")
        assert "over" in by_id(browser, "peak-share").get_attribute("class")
        bar = by_id(browser, "bar").size["width"]
        gauge_mark = float(by_id(browser, "full-mark").value_of_css_property("left").removesuffix("px"))
        assert gauge_mark < bar  # the line for full text sits inside the bar, at full / held of it
        assert abs(gauge_mark / bar - full / held) < 0.02
        assert console_errors(browser) == []
    finally:
        stop()
